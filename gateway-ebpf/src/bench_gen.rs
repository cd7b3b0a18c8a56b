//! Traffic generator for `cargo xtask bench xdp`, not part of the gateway.
//!
//! Driven by `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: the kernel
//! runs this program on copies of one template frame, and `XDP_TX` makes it
//! transmit each copy out of the `ingress_ifindex` given in the test context
//! (a veth), so the peer receives real frames at a rate a userspace sender
//! cannot reach on a 2-core machine. The frame is sent unchanged.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_gen(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
