//! The bench's floor: empty fentry/fexit programs (`bpf/floor.bpf.c`) on
//! every helper function the kernel has, and an empty fentry on
//! `bpf_sk_release`, the same attach points as skprof's fentry probes.

use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{anyhow, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, OpenObject};

use super::probes::split_prog_name;
use super::{libbpf_reason, take_libbpf_log};
use crate::kernel::KernelFunctions;

crate::bpf::skeleton!(mod skel = "floor.skel.rs");
use skel::*;

/// The attached empty probes; dropping it detaches them.
pub struct Floor {
    _links: Vec<Link>,
    _skel: FloorSkel<'static>,
}

impl Floor {
    /// Loads and attaches the empty pairs on the functions in `funcs.btf`,
    /// and with `program` (a BPF program's fd and function name) an empty
    /// pair on that program too.
    pub fn attach(
        funcs: &KernelFunctions,
        program: Option<(BorrowedFd<'_>, &str)>,
    ) -> Result<Floor> {
        // As in Probes: the skeleton borrows its storage for its whole life.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = FloorSkelBuilder::default()
            .open(storage)
            .context("open BPF object floor.bpf.o")?;
        for mut prog in open.open_object_mut().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            if name.starts_with("floor_prog_") {
                match program {
                    Some((fd, func)) => prog
                        .set_attach_target(fd.as_raw_fd(), Some(func.to_string()))
                        .with_context(|| format!("set the target of {name} to {func}"))?,
                    None => prog.set_autoload(false),
                }
                continue;
            }
            let wanted = split_prog_name(&name).is_some_and(|(_, f)| funcs.btf.contains(f));
            prog.set_autoload(wanted);
        }
        take_libbpf_log();
        let skel = open.load().map_err(|e| {
            let what = match libbpf_reason(&take_libbpf_log()) {
                Some(r) => format!("load the empty fentry/fexit floor: {r}"),
                None => "load the empty fentry/fexit floor".to_string(),
            };
            anyhow!(e).context(what)
        })?;
        let mut links = Vec::new();
        for prog in skel.object().progs_mut() {
            if !prog.autoload() {
                continue;
            }
            let name = prog.name().to_string_lossy().into_owned();
            links.push(
                prog.attach()
                    .with_context(|| format!("attach floor program {name}"))?,
            );
        }
        Ok(Floor {
            _links: links,
            _skel: skel,
        })
    }
}
