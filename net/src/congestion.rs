//! The congestion controller of every connection: Cubic and BBR side by side, each told of every
//! packet sent, acknowledged and lost, the larger of their windows used.
//!
//! Each alone loses somewhere a drive is shared:
//! - Cubic reads every lost packet as congestion. Over a 20 Mbit/s link with 50 ms RTT and 1%
//!   random loss (Wi-Fi, long paths) it held a clone to 44% of the link; BBR reached 88%.
//! - BBR sizes its window from the least RTT it has seen. Where the two ends share busy CPUs
//!   (loopback, veth) and the RTT swings with the load, that window starved the sender: a
//!   256 MiB clone took 1.7–2.5 s against Cubic's 1.3–1.7 s.
//!
//! With the larger window, a clean path runs at Cubic's pace and a lossy one at BBR's; on a
//! congested path both shrink (BBR to its measured bandwidth-delay product).

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{BbrConfig, Controller, ControllerFactory, CubicConfig};
use quinn_proto::RttEstimator;

/// Builds a [`Both`] for each connection.
#[derive(Debug, Default)]
pub struct BothConfig {
    cubic: Arc<CubicConfig>,
    bbr: Arc<BbrConfig>,
}

impl ControllerFactory for BothConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Both {
            cubic: self.cubic.clone().build(now, current_mtu),
            bbr: self.bbr.clone().build(now, current_mtu),
        })
    }
}

/// Cubic and BBR fed the same events; the window is the larger of theirs.
pub struct Both {
    cubic: Box<dyn Controller>,
    bbr: Box<dyn Controller>,
}

impl Controller for Both {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
        self.bbr.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
        self.bbr.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest_packet_num_acked: Option<u64>) {
        self.cubic.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        self.bbr.on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.cubic.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        self.bbr.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
        self.bbr.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window().max(self.bbr.window())
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Both { cubic: self.cubic.clone_box(), bbr: self.bbr.clone_box() })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window().max(self.bbr.initial_window())
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
