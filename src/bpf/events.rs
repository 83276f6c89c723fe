//! The helper probes' ring buffer: run leaks (a reference still held when
//! a traced program's run ended) and, with `ledger_trace`, every ledger
//! step.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, RingBuffer, RingBufferBuilder};

use super::pod::read_pod;
use super::probes::Probes;
use super::read::outstanding;
use super::skel::types;
use crate::model::ids::{Helper, SockClass};
use crate::model::ledger::RunLeak;
use crate::model::ledger_model::LedgerEvent;

/// What the ring buffer delivered since the last read.
#[derive(Debug, Default)]
pub struct Events {
    pub run_leaks: Vec<RunLeak>,
    /// With `ledger_trace`: every ledger step, run leaks included, in ring
    /// order.
    pub trace: Vec<LedgerEvent>,
}

/// Where the ring buffer's callback leaves each record's bytes until
/// [`Probes::take_events`] decodes them.
pub(super) type EventBuf = Arc<Mutex<Vec<Vec<u8>>>>;

/// Opens the ring buffer of map `events`, copying each record into the
/// returned buffer as it is consumed.
pub(super) fn event_ring(events: &dyn MapCore) -> Result<(RingBuffer<'static>, EventBuf)> {
    let event_buf: EventBuf = Arc::default();
    let sink = Arc::clone(&event_buf);
    let mut rb = RingBufferBuilder::new();
    rb.add(events, move |data: &[u8]| {
        if let Ok(mut v) = sink.lock() {
            v.push(data.to_vec());
        }
        0
    })
    .context("open the events ring buffer")?;
    let ring = rb.build().context("open the events ring buffer")?;
    Ok((ring, event_buf))
}

impl Probes {
    /// Leak events delivered since the last call.
    pub fn take_run_leaks(&self) -> Result<Vec<RunLeak>> {
        Ok(self.take_events()?.run_leaks)
    }

    /// Everything the ring buffer delivered since the last call.
    pub fn take_events(&self) -> Result<Events> {
        self.events
            .consume()
            .context("read the events ring buffer")?;
        let raw = self
            .event_buf
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let mut out = Events::default();
        for bytes in raw {
            let Some(ty) = bytes.get(..4) else {
                continue;
            };
            let ty = u32::from_ne_bytes(ty.try_into().expect("4 bytes"));
            if ty == types::skprof_event_type::SKPROF_EV_RUN_LEAK.0 {
                let ev: types::skprof_event = read_pod(&bytes)?;
                let holder = (ev.holder as usize).min(ev.r#ref.h.len() - 1);
                let h = &ev.r#ref.h[holder];
                out.trace.push(LedgerEvent::RunLeak {
                    ts: ev.ts,
                    sk: ev.sk,
                    run: h.run_id,
                    slot: h.prog_slot,
                });
                let reference = outstanding(ev.sk, &ev.r#ref, holder);
                out.run_leaks.push(RunLeak {
                    ts_ns: ev.ts,
                    prog_id: reference.prog_id,
                    prog_name: String::new(),
                    reference,
                    site: None,
                });
            } else if let Some(ev) = trace_event(&read_pod(&bytes)?) {
                out.trace.push(ev);
            }
        }
        Ok(out)
    }
}

/// A ledger trace record as the model's event; None for unknown types.
fn trace_event(t: &types::skprof_trace) -> Option<LedgerEvent> {
    use types::skprof_event_type as T;
    let class = SockClass::ALL
        .get(t.sock_class as usize)
        .copied()
        .unwrap_or(SockClass::Other);
    use types::skprof_trace_flag as F;
    let flag = |f: F| u32::from(t.flags) & f.0 != 0;
    let (ts, cpu, sk, run, slot) = (t.ts, t.cpu, t.sk, t.run_id, t.prog_slot);
    Some(match t.r#type {
        x if x == T::SKPROF_EV_ACQUIRE.0 => LedgerEvent::Acquire {
            ts,
            cpu,
            sk,
            run,
            slot,
            helper: Helper::from_index(t.helper as usize)?,
            class,
            refcounted: flag(F::SKPROF_TF_REFCOUNTED),
            recorded: flag(F::SKPROF_TF_RECORDED),
            timed: flag(F::SKPROF_TF_TIMED),
        },
        x if x == T::SKPROF_EV_RELEASE.0 => LedgerEvent::Release {
            ts,
            cpu,
            sk,
            class,
            refcounted: flag(F::SKPROF_TF_REFCOUNTED),
            matched: flag(F::SKPROF_TF_MATCHED),
            slot,
            run,
        },
        x if x == T::SKPROF_EV_RUN_START.0 => LedgerEvent::RunStart { ts, cpu, run, slot },
        x if x == T::SKPROF_EV_RUN_END.0 => LedgerEvent::RunEnd { ts, cpu, run, slot },
        _ => return None,
    })
}
