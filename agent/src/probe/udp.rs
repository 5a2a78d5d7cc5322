//! The UDP prober: honest three states.

use super::{ProbeCtx, ProbeFuture, Prober};
use crate::check::Protocol;
use crate::result::{CheckResult, Reason, Status};

pub struct UdpProber;

impl Prober for UdpProber {
    fn protocol(&self) -> Protocol {
        Protocol::Udp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        let _ = ctx;
        Box::pin(async { CheckResult::new(Status::Down, Reason::Internal, "udp is not built yet") })
    }
}
