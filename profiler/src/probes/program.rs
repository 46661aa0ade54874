//! The eBPF programs a probe is made of, where each attaches, and the check of a BTF tracepoint's
//! prototype against the running kernel: only the arguments a program reads, by position and type,
//! so a tracepoint that gained arguments (sched_process_exit in 6.2) still fits, and one that lacks
//! what a program reads (sched_switch's prev_state before 5.18) picks the probe's other variant.

use anyhow::{Result, anyhow, bail};
use btf_rs::{Btf, Type};

/// One program of the eBPF object.
#[derive(Debug)]
pub struct Program {
    /// Its function name in the eBPF object.
    pub name: &'static str,
    pub attach: Attach,
}

#[derive(Debug)]
pub enum Attach {
    /// A BTF tracepoint (`tp_btf`).
    Tracepoint(Tracepoint),
    /// The software CPU clock of every online CPU (a perf_event program).
    CpuClock,
    /// Not attached: a program that others tail-call, at `index` of program array `array`, of
    /// their program type.
    TailCall { array: &'static str, index: u32, of: Caller },
}

/// The program type a tail-called program shares with its callers.
#[derive(Debug)]
pub enum Caller {
    /// perf_event programs (the CPU clock's).
    PerfEvent,
    /// BTF tracepoint programs of this tracepoint: loaded against it, never attached.
    Tracepoint(Tracepoint),
}

/// A BTF tracepoint and the arguments the program reads from it.
#[derive(Debug)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// What the program reads at each position; `Arg::Unread` for positions it skips.
    pub args: &'static [Arg],
}

/// The type a program expects an argument to have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// Not read: any type, but the position must exist if a later one is read.
    Unread,
    /// A pointer to `struct NAME`.
    StructPtr(&'static str),
    /// An integer (or bool) of this many bytes.
    Int(u32),
}

/// A BTF tracepoint program's attachment.
pub const fn tracepoint(category: &'static str, name: &'static str, args: &'static [Arg]) -> Attach {
    Attach::Tracepoint(Tracepoint { category, name, args })
}

/// The argument of every sched tracepoint the probes read: the task.
pub const TASK: Arg = Arg::StructPtr("task_struct");

/// One slot of a probe: the programs that can fill it, in order of preference. The first whose
/// tracepoint fits the running kernel is loaded.
pub type Alternatives = &'static [Program];

impl Program {
    /// The tracepoint, for BTF tracepoint programs (attached or tail-called).
    pub fn tracepoint(&self) -> Option<&Tracepoint> {
        match &self.attach {
            Attach::Tracepoint(tp) | Attach::TailCall { of: Caller::Tracepoint(tp), .. } => Some(tp),
            Attach::CpuClock | Attach::TailCall { of: Caller::PerfEvent, .. } => None,
        }
    }

    /// Whether the program fits the running kernel; why not, if not.
    pub fn check(&self, btf: &Btf) -> Result<()> {
        match self.tracepoint() {
            Some(tp) => tp.check(btf),
            None => Ok(()),
        }
    }
}

/// The first program of `alternatives` that fits the kernel, or why none does (the reason of the
/// first, the preferred one).
pub fn choose(alternatives: Alternatives, btf: &Btf) -> Result<&'static Program> {
    let mut first_error = None;
    for program in alternatives {
        match program.check(btf) {
            Ok(()) => return Ok(program),
            Err(error) => {
                tracing::debug!("program {} does not fit this kernel: {error:#}", program.name);
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| anyhow!("no program to choose from")))
}

impl Tracepoint {
    /// Checks that the tracepoint exists and that each argument the program reads has the type it
    /// expects.
    pub fn check(&self, btf: &Btf) -> Result<()> {
        let (category, name) = (self.category, self.name);
        let params = prototype(btf, name)?;
        for (index, expected) in self.args.iter().enumerate() {
            if *expected == Arg::Unread {
                continue;
            }
            let Some(param) = params.get(index) else {
                bail!(
                    "tracepoint {category}:{name} has {} arguments on this kernel, and the program reads argument {}",
                    params.len(),
                    index + 1
                );
            };
            let found = describe(btf, param)?;
            if !matches(expected, &found) {
                bail!(
                    "argument {} of tracepoint {category}:{name} is {found} on this kernel, and the program reads {}",
                    index + 1,
                    expected.describe()
                );
            }
        }
        Ok(())
    }
}

impl Arg {
    fn describe(&self) -> String {
        match self {
            Arg::Unread => "anything".into(),
            Arg::StructPtr(name) => format!("struct {name} *"),
            Arg::Int(bytes) => format!("a {bytes}-byte integer"),
        }
    }
}

/// What an argument's type resolves to, for matching and for messages.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    StructPtr(String),
    Int(u32),
    Other(String),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::StructPtr(name) => write!(f, "struct {name} *"),
            Found::Int(bytes) => write!(f, "a {bytes}-byte integer"),
            Found::Other(kind) => write!(f, "{kind}"),
        }
    }
}

fn matches(expected: &Arg, found: &Found) -> bool {
    match (expected, found) {
        (Arg::StructPtr(want), Found::StructPtr(have)) => want == have,
        (Arg::Int(want), Found::Int(have)) => want == have,
        _ => false,
    }
}

/// The parameters of BTF tracepoint `name`, without the hidden context one: its `btf_trace_<name>`
/// typedef is a pointer to a function prototype whose first parameter is `void *__data`.
fn prototype(btf: &Btf, name: &str) -> Result<Vec<btf_rs::Parameter>> {
    let id = tracepoint_type_id(btf, name)?;
    let mut ty = btf.resolve_type_by_id(id)?;
    loop {
        ty = match ty {
            Type::Typedef(t) => btf.resolve_chained_type(&t)?,
            Type::Ptr(p) => btf.resolve_chained_type(&p)?,
            Type::FuncProto(proto) => return Ok(proto.parameters.into_iter().skip(1).collect()),
            _ => bail!("btf_trace_{name} in the kernel's BTF is not a function pointer"),
        }
    }
}

/// Resolves a parameter's type through typedefs and qualifiers.
fn describe(btf: &Btf, param: &btf_rs::Parameter) -> Result<Found> {
    let mut ty = btf.resolve_chained_type(param)?;
    let mut pointer = false;
    loop {
        ty = match ty {
            Type::Typedef(t) => btf.resolve_chained_type(&t)?,
            Type::Const(t) => btf.resolve_chained_type(&t)?,
            Type::Volatile(t) => btf.resolve_chained_type(&t)?,
            Type::Restrict(t) => btf.resolve_chained_type(&t)?,
            Type::Ptr(p) if !pointer => {
                pointer = true;
                btf.resolve_chained_type(&p)?
            }
            Type::Struct(s) if pointer => return Ok(Found::StructPtr(btf.resolve_name(&s).unwrap_or_default())),
            Type::Int(int) if !pointer => return Ok(Found::Int(int.size() as u32)),
            Type::Enum(e) if !pointer => return Ok(Found::Int(e.size() as u32)),
            other => return Ok(Found::Other(format!("{}{}", other.name(), if pointer { " *" } else { "" }))),
        }
    }
}

/// The kernel's BTF type id of BTF tracepoint `name` (its `btf_trace_<name>` typedef): the id a
/// program attaching to it is loaded against.
pub fn tracepoint_type_id(btf: &Btf, name: &str) -> Result<u32> {
    btf.resolve_ids_by_name(&format!("btf_trace_{name}"))
        .ok()
        .and_then(|ids| ids.first().copied())
        .ok_or_else(|| anyhow!("this kernel has no tracepoint {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::btf::{VMLINUX_BTF, load_vmlinux};

    fn kernel_btf() -> Option<Btf> {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return None;
        }
        Some(load_vmlinux().unwrap().btf)
    }

    const SWITCH: Tracepoint = Tracepoint {
        category: "sched",
        name: "sched_switch",
        args: &[Arg::Int(1), Arg::StructPtr("task_struct"), Arg::StructPtr("task_struct")],
    };

    #[test]
    fn arguments_are_checked_by_position_and_type() {
        let Some(btf) = kernel_btf() else { return };
        SWITCH.check(&btf).unwrap();
        // Only what is read counts: sched_process_exit's later arguments do not matter.
        let exit = Tracepoint { category: "sched", name: "sched_process_exit", args: &[Arg::StructPtr("task_struct")] };
        exit.check(&btf).unwrap();

        let wrong_type = Tracepoint { args: &[Arg::Unread, Arg::StructPtr("pt_regs")], ..SWITCH };
        let error = wrong_type.check(&btf).unwrap_err().to_string();
        assert!(error.contains("argument 2") && error.contains("struct task_struct *"), "{error}");

        let too_many =
            Tracepoint { args: &[Arg::Unread, Arg::Unread, Arg::Unread, Arg::Unread, Arg::Int(8)], ..SWITCH };
        let error = too_many.check(&btf).unwrap_err().to_string();
        assert!(error.contains("reads argument 5"), "{error}");

        let missing = Tracepoint { name: "no_such_tracepoint", ..SWITCH };
        assert!(missing.check(&btf).unwrap_err().to_string().contains("no tracepoint no_such_tracepoint"));
    }

    #[test]
    fn the_first_fitting_alternative_is_chosen() {
        let Some(btf) = kernel_btf() else { return };
        const ALTERNATIVES: Alternatives = &[
            Program {
                name: "needs_a_sixth_argument",
                attach: Attach::Tracepoint(Tracepoint {
                    args: &[Arg::Unread, Arg::Unread, Arg::Unread, Arg::Unread, Arg::Unread, Arg::Int(4)],
                    ..SWITCH
                }),
            },
            Program { name: "fits", attach: Attach::Tracepoint(SWITCH) },
        ];
        assert_eq!(choose(ALTERNATIVES, &btf).unwrap().name, "fits");
        let error = choose(&ALTERNATIVES[..1], &btf).unwrap_err().to_string();
        assert!(error.contains("reads argument 6"), "the preferred program's reason: {error}");
    }
}
