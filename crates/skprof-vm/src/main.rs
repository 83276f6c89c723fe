//! skprof-vm: run a command under a Debian kernel in qemu (TCG), with the
//! host's `/` as the guest's root. See the `skprof_vm` library.
//!
//! Exit codes of `run`: the job's own exit status; 124 if the VM timed out;
//! 125 for harness failures (download, virtiofsd, qemu, guest panic), so
//! they're distinguishable from the job's codes.

use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use skprof_vm::{self as vm, Cache, CachedKernel, Job, Kernel, Output, VmConfig};

/// Exit code for harness failures.
const EXIT_HARNESS: u8 = 125;
/// Exit code for a VM timeout (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;

#[derive(Parser)]
#[command(
    name = "skprof-vm",
    version,
    about = "Run a command in a qemu VM under a Debian kernel, with the host's / as root"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a VM and run CMD in it (in the current directory); exit with its
    /// status (124: timeout, 125: harness failure).
    Run(RunArgs),
    /// Download the newest kernel of a series (if not cached) and print the
    /// cached kernel paths.
    Fetch {
        /// 6.1, 6.12 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Run `apt-get update` first.
        #[arg(long)]
        update: bool,
    },
    /// List cached kernels.
    List,
}

#[derive(Args)]
struct RunArgs {
    /// Kernel series (6.1, 6.12) or path to a bzImage.
    #[arg(long, default_value = "6.12")]
    kernel: String,
    /// initrd for --kernel PATH.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = vm::DEFAULT_TIMEOUT.as_secs())]
    timeout: u64,
    /// Guest memory (e.g. 2G, 512M).
    #[arg(long, default_value = "2G")]
    mem: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = vm::DEFAULT_CPUS)]
    cpus: u32,
    /// Stream the job's output live (interactive if stdin is a terminal)
    /// instead of printing it after the run.
    #[arg(long)]
    console: bool,
    /// Forward 127.0.0.1:HOST to the guest's port GUEST (TCP), HOST:GUEST.
    #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Count the guest's time in instructions (qemu -icount): 1 ns per
    /// instruction executed, idle time skipped. Timings in the guest (e.g.
    /// `skprof bench`) become exact, repeatable instruction counts, whatever
    /// the host's load; they weigh every instruction alike, so they are not
    /// times. Guest sleeps end at once. A 6.1 guest stops while bringing up
    /// its second CPU under it (its clock stops): use --cpus 1 there.
    #[arg(long)]
    icount: bool,
    /// Print boot and total times to stderr.
    #[arg(short, long)]
    verbose: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, num_args = 1..)]
    cmd: Vec<String>,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected HOST:GUEST"))?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{p:?} is not a port"))
    };
    Ok((port(h)?, port(g)?))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // Usage errors are harness failures too, not the job's status 2.
            return ExitCode::from(if err.use_stderr() { EXIT_HARNESS } else { 0 });
        }
    };
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Fetch { kernel, update } => fetch(&kernel, update).map(|()| 0),
        Cmd::List => list().map(|()| 0),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("skprof-vm: {err:#}");
            ExitCode::from(if vm::is_timeout(&err) {
                EXIT_TIMEOUT
            } else {
                EXIT_HARNESS
            })
        }
    }
}

fn run(args: RunArgs) -> Result<u8> {
    let mut cfg = VmConfig::new(vm::kernel_source(&args.kernel, args.initrd.as_deref())?);
    cfg.mem_mib = vm::parse_mem(&args.mem)?;
    if args.cpus == 0 {
        bail!("--cpus must be at least 1");
    }
    cfg.cpus = args.cpus;
    cfg.timeout = Duration::from_secs(args.timeout);
    cfg.forwards = args.forwards;
    cfg.icount = args.icount;
    let output = if args.console {
        Output::Console
    } else {
        Output::Capture
    };
    let job = Job::new(args.cmd).output(output);
    let out = vm::run(&cfg, &job)?;
    // Best effort: a closed stdout/stderr must not turn into a harness error.
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    if args.verbose {
        eprintln!(
            "skprof-vm: {}: boot {} ms, total {} ms, exit {}",
            out.kernel, out.boot_ms, out.total_ms, out.status
        );
    }
    Ok(u8::try_from(out.status).unwrap_or(EXIT_HARNESS))
}

fn series_arg(arg: &str) -> Result<Vec<Kernel>> {
    if arg == "all" {
        Ok(Kernel::ALL.to_vec())
    } else {
        Ok(vec![arg.parse()?])
    }
}

fn print_kernel(k: &CachedKernel) {
    println!("{}\t{}", k.series, k.image.vmlinuz.display());
    if let Some(initrd) = &k.image.initrd {
        println!("{}\t{}", k.series, initrd.display());
    }
    if let Some(modules) = &k.image.modules {
        println!("{}\t{}", k.series, modules.display());
    }
}

fn fetch(arg: &str, update: bool) -> Result<()> {
    let cache = Cache::from_env()?;
    for (i, series) in series_arg(arg)?.into_iter().enumerate() {
        // apt-get update at most once.
        let k = cache
            .fetch(series, update && i == 0)
            .with_context(|| format!("fetch kernel {series}"))?;
        print_kernel(&k);
    }
    Ok(())
}

fn list() -> Result<()> {
    let cache = Cache::from_env()?;
    let kernels = cache.list()?;
    if kernels.is_empty() {
        eprintln!(
            "no kernels cached in {} (run `skprof-vm fetch`)",
            cache.kernels_dir().display()
        );
    }
    for k in &kernels {
        let initrd = if k.image.initrd.is_some() {
            "initrd"
        } else {
            "no initrd"
        };
        println!(
            "{}\t{}\t{}\t{}",
            k.series,
            k.package,
            initrd,
            k.dir.display()
        );
    }
    Ok(())
}
