//! Types shared between the XDP program (`gateway-ebpf`) and the gateway.
#![no_std]
