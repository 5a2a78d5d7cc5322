//! The ICMP echo prober.

use super::{ProbeCtx, ProbeFuture, Prober};
use crate::check::Protocol;
use crate::result::{CheckResult, Reason, Status};

#[derive(Default)]
pub struct IcmpProber;

impl Prober for IcmpProber {
    fn protocol(&self) -> Protocol {
        Protocol::Icmp
    }

    fn probe<'a>(&'a self, ctx: ProbeCtx<'a>) -> ProbeFuture<'a> {
        let _ = ctx;
        Box::pin(async {
            CheckResult::new(Status::Down, Reason::Internal, "icmp is not built yet")
        })
    }
}
