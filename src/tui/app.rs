//! The dashboard's state: a plain struct changed only by `App::update`,
//! which eats batches from the collector and actions from the keyboard. Every
//! figure the view shows is computed here, so drawing only formats.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::model::hist::{LogHist, Percentiles};
use crate::model::ids::{Helper, Outcome, SockClass};
use crate::model::ledger::LedgerScan;
use crate::model::ledger::OutstandingRef;
use crate::model::reading::{Reading, SourceInfo};
use crate::model::snapshot::{
    Cell, CellKey, Grouping, HelperStats, IntervalStats, Snapshot, UNATTRIBUTED,
};

/// History samples kept for the sparklines.
pub const HISTORY: usize = 300;
/// A history sample spans at least this much (shorter intervals are merged),
/// so the sparklines cover at least `HISTORY` seconds, whatever the
/// refresh rate.
pub const SAMPLE_MIN_S: f64 = 1.0;
/// A reference outstanding this long counts as leaked (the `skprof leaks`
/// default: program runs take microseconds).
pub const LEAK_AGE_NS: u64 = 500_000_000;
/// Error lines kept for the status line.
const ERRORS_KEPT: usize = 5;
/// Outstanding references listed in the drill-down.
pub const REFS_LISTED: usize = 50;

/// Identity of a table row, stable across readings, sorts and filters (the
/// selection follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKey {
    Helper(Helper),
    Program {
        slot: u32,
        helper: Helper,
    },
    Netns {
        netns: u32,
        helper: Helper,
    },
    Interface {
        netns: u32,
        ifindex: u32,
        helper: Helper,
    },
    /// A call site (its return address), with `--sites`.
    Site {
        site: u64,
        helper: Helper,
    },
}

impl RowKey {
    pub fn helper(self) -> Helper {
        match self {
            RowKey::Helper(h)
            | RowKey::Program { helper: h, .. }
            | RowKey::Netns { helper: h, .. }
            | RowKey::Interface { helper: h, .. }
            | RowKey::Site { helper: h, .. } => h,
        }
    }

    /// Whether an aggregate belongs to this row.
    pub fn matches(self, k: &CellKey) -> bool {
        k.helper == self.helper()
            && match self {
                RowKey::Helper(_) => true,
                RowKey::Program { slot, .. } => k.prog == slot,
                RowKey::Netns { netns, .. } => k.netns == netns,
                RowKey::Interface { netns, ifindex, .. } => {
                    k.netns == netns && k.ifindex == ifindex
                }
                RowKey::Site { site, .. } => k.site == site,
            }
    }

    /// The row of an aggregate under a grouping.
    fn of_cell(k: &CellKey, by: Grouping) -> RowKey {
        let helper = k.helper;
        match by {
            Grouping::Helper => RowKey::Helper(helper),
            Grouping::Program => RowKey::Program {
                slot: k.prog,
                helper,
            },
            // One row per call site, whatever slots its calls were
            // charged to (as `stat --by site`).
            Grouping::Site => RowKey::Site {
                site: k.site,
                helper,
            },
            Grouping::Netns => RowKey::Netns {
                netns: k.netns,
                helper,
            },
            Grouping::Interface => RowKey::Interface {
                netns: k.netns,
                ifindex: k.ifindex,
                helper,
            },
        }
    }

    fn of_stats(r: &HelperStats) -> Option<RowKey> {
        let helper = Helper::from_function(r.helper)?;
        if let Some(site) = &r.site {
            return Some(RowKey::Site {
                site: site.addr,
                helper,
            });
        }
        Some(match (&r.program, &r.place) {
            (Some(p), _) => RowKey::Program {
                slot: p.slot,
                helper,
            },
            (None, Some(place)) => match place.ifindex {
                Some(ifindex) => RowKey::Interface {
                    netns: place.netns,
                    ifindex,
                    helper,
                },
                None => RowKey::Netns {
                    netns: place.netns,
                    helper,
                },
            },
            (None, None) => RowKey::Helper(helper),
        })
    }
}

/// Table columns, in display order; each can be the sort key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Name,
    CallsPerS,
    HitPct,
    P50,
    P99,
    Max,
    Acquired,
    Released,
    Outstanding,
    HoldP99,
    Leaks,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Name,
        Column::CallsPerS,
        Column::HitPct,
        Column::P50,
        Column::P99,
        Column::Max,
        Column::Acquired,
        Column::Released,
        Column::Outstanding,
        Column::HoldP99,
        Column::Leaks,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::CallsPerS => "CALLS/s",
            Column::HitPct => "HIT%",
            Column::P50 => "P50",
            Column::P99 => "P99",
            Column::Max => "MAX",
            Column::Acquired => "ACQ",
            Column::Released => "REL",
            Column::Outstanding => "OUT",
            Column::HoldP99 => "HOLD99",
            Column::Leaks => "LEAKS",
        }
    }

    fn index(self) -> usize {
        Column::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    fn step(self, by: isize) -> Column {
        let n = Column::ALL.len() as isize;
        Column::ALL[(self.index() as isize + by).rem_euclid(n) as usize]
    }

    /// Names read best A to Z; figures biggest first.
    fn natural_descending(self) -> bool {
        self != Column::Name
    }
}

/// Which screen is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Table,
    Detail,
    Help,
}

/// What the figures (all but calls/s, always the last interval's) cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Since start, or since the last `r`.
    SinceReset,
    LastInterval,
}

/// One table row, ready to format. `None`: not known (no calls, no ledger,
/// or not attributable under this grouping).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: RowKey,
    /// The program (`name[id]`), netns or `interface@netns`; empty when
    /// grouped by helper.
    pub place: String,
    pub helper: Helper,
    /// The kernel's id of the row's program (program grouping).
    pub prog_id: Option<u32>,
    /// Calls in the window.
    pub calls: u64,
    /// Over the last interval.
    pub calls_per_s: f64,
    pub hit_pct: Option<f64>,
    pub p50: Option<u64>,
    pub p99: Option<u64>,
    pub max: Option<u64>,
    pub acquired: u64,
    pub released: Option<u64>,
    pub outstanding: Option<u64>,
    pub hold_p99: Option<u64>,
    pub leaks: Option<u64>,
}

impl Row {
    fn sort_value(&self, c: Column) -> f64 {
        let o = |v: Option<u64>| v.map_or(-1.0, |v| v as f64);
        match c {
            Column::Name => 0.0,
            Column::CallsPerS => self.calls_per_s,
            Column::HitPct => self.hit_pct.unwrap_or(-1.0),
            Column::P50 => o(self.p50),
            Column::P99 => o(self.p99),
            Column::Max => o(self.max),
            Column::Acquired => self.acquired as f64,
            Column::Released => o(self.released),
            Column::Outstanding => o(self.outstanding),
            Column::HoldP99 => o(self.hold_p99),
            Column::Leaks => o(self.leaks),
        }
    }

    fn matches_filter(&self, f: &str) -> bool {
        if f.is_empty() {
            return true;
        }
        let f = f.to_lowercase();
        self.place.to_lowercase().contains(&f)
            || self.helper.function().contains(&f)
            || self.prog_id.is_some_and(|id| id.to_string() == f)
    }
}

/// The header's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    /// All helpers, last interval.
    pub calls_per_s: f64,
    /// Calls not measured since the baseline: unmatched exits, evicted
    /// entries, recursion misses, runs not recorded, events lost.
    pub drops: u64,
    /// Maps that overflowed since the baseline: aggregates over
    /// --max-series, acquires over --ledger-size, latencies over 34 s.
    pub overflows: u64,
    pub outstanding: Option<u64>,
    /// References older than `LEAK_AGE_NS`, plus runs that ended holding
    /// one since the baseline.
    pub leaks: Option<u64>,
    /// Seconds the window covers.
    pub window_s: f64,
    /// The probes' CPU use, percent of one core: calls per second times
    /// the calibrated cost per lookup (`--calibrate`).
    pub probe_cpu_pct: Option<f64>,
    /// Acquired against released over the window, in every face's words.
    pub balance: Option<crate::model::words::Balance>,
}

/// The drill-down of the selected row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detail {
    /// Latency of every outcome, over the window.
    pub latency: LogHist,
    pub latency_pct: Percentiles,
    pub outcomes: [u64; Outcome::COUNT],
    pub hits_by_class: [u64; SockClass::COUNT],
    pub acquired: u64,
    /// Hold time of the row's program's references (program grouping only:
    /// releases are known per acquiring program, not per helper or place).
    pub hold: Option<(LogHist, Percentiles)>,
    /// The row's outstanding references, oldest first, at most
    /// `REFS_LISTED`; `None` without a ledger.
    pub refs: Option<Vec<OutstandingRef>>,
    pub refs_total: u64,
    /// CLOCK_MONOTONIC of the ledger scan, for the references' ages.
    pub ledger_now_ns: u64,
    /// Calls per second and p99 latency (ns) per history sample, oldest
    /// first.
    pub calls_series: Vec<u64>,
    pub p99_series: Vec<u64>,
    /// Seconds per history sample.
    pub sample_s: f64,
}

/// What changes the state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Tick(Box<Reading>),
    /// The source has nothing more (end of a replay).
    Ended(String),
    /// The source failed.
    Failed(String),
    Up,
    Down,
    PageUp,
    PageDown,
    First,
    Last,
    /// Open the drill-down (or close it).
    Open,
    /// Close what is open; on the table, clear the filter, else quit.
    Back,
    Quit,
    SortNext,
    SortPrev,
    SortReverse,
    FilterStart,
    FilterInput(char),
    FilterDelete,
    FilterAccept,
    FilterCancel,
    Regroup,
    ToggleWindow,
    Pause,
    Reset,
    Help,
    Resize(u16, u16),
}

/// A span of history: what happened, over how long.
#[derive(Debug, Clone)]
struct Sample {
    delta: Snapshot,
    secs: f64,
}

/// Run leaks by (program id, helper, netns).
/// Run leaks by (program id, helper, netns, call site).
type LeakCounts = BTreeMap<(u32, Helper, u32, u64), u64>;

#[derive(Debug)]
pub struct App {
    pub info: SourceInfo,
    pub grouping: Grouping,
    pub sort: Column,
    pub descending: bool,
    pub filter: String,
    /// The filter is being typed.
    pub editing_filter: bool,
    pub screen: Screen,
    /// The screen under the help.
    below_help: Screen,
    pub window: Window,
    pub paused: bool,
    pub quit: bool,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
    pub selected: Option<RowKey>,
    /// Rows after filter and sort.
    pub rows: Vec<Row>,
    /// Rows before the filter.
    pub rows_total: usize,
    pub totals: Totals,
    pub detail: Option<Detail>,
    /// Latest non-fatal errors, newest last.
    pub errors: VecDeque<String>,
    /// The source failed: no more data comes.
    pub failed: Option<String>,
    /// The source ended (a replay): the last reading is held.
    pub ended: Option<String>,
    /// Readinges taken, since start.
    pub readings: u64,
    /// The current reading (the newest applied).
    cur: Option<Reading>,
    /// The reading before it.
    before: Option<Reading>,
    /// `cur - before`: the last interval, kept for the calls/s column.
    last_delta: Option<Snapshot>,
    /// The baseline (first reading, or the reading at `r`).
    base: Option<Reading>,
    /// Readinges that came while paused, merged, applied on resume.
    pending: Option<Reading>,
    history: VecDeque<Sample>,
    /// History not yet `SAMPLE_MIN_S` long.
    partial: Option<Sample>,
    run_leaks_since_base: LeakCounts,
    run_leaks_last: LeakCounts,
}

impl App {
    pub fn new(info: SourceInfo, grouping: Grouping) -> App {
        App {
            info,
            grouping,
            sort: Column::CallsPerS,
            descending: true,
            filter: String::new(),
            editing_filter: false,
            screen: Screen::Table,
            below_help: Screen::Table,
            window: Window::SinceReset,
            paused: false,
            quit: false,
            size: (80, 24),
            selected: None,
            rows: Vec::new(),
            rows_total: 0,
            totals: Totals::default(),
            detail: None,
            errors: VecDeque::new(),
            failed: None,
            ended: None,
            readings: 0,
            cur: None,
            before: None,
            last_delta: None,
            base: None,
            pending: None,
            history: VecDeque::new(),
            partial: None,
            run_leaks_since_base: LeakCounts::new(),
            run_leaks_last: LeakCounts::new(),
        }
    }

    /// The current reading, if any.
    pub fn current(&self) -> Option<&Reading> {
        self.cur.as_ref()
    }

    /// Index of the selected row in `rows`.
    pub fn selected_index(&self) -> Option<usize> {
        let k = self.selected?;
        self.rows.iter().position(|r| r.key == k)
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.selected_index().map(|i| &self.rows[i])
    }

    /// History samples kept.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Table rows visible at the current size (for paging).
    fn page(&self) -> usize {
        (self.size.1 as usize).saturating_sub(6).max(1)
    }

    /// The action a key stands for, in the current mode.
    pub fn key_action(&self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && key.code == KeyCode::Char('c') {
            return Some(Action::Quit);
        }
        if self.editing_filter {
            return match key.code {
                KeyCode::Esc => Some(Action::FilterCancel),
                KeyCode::Enter => Some(Action::FilterAccept),
                KeyCode::Backspace => Some(Action::FilterDelete),
                KeyCode::Up => Some(Action::Up),
                KeyCode::Down => Some(Action::Down),
                KeyCode::Char(c) if !ctrl => Some(Action::FilterInput(c)),
                _ => None,
            };
        }
        if self.screen == Screen::Help {
            return Some(match key.code {
                KeyCode::Char('q') => Action::Quit,
                // Any other key leaves the help.
                _ => Action::Help,
            });
        }
        Some(match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Esc => Action::Back,
            KeyCode::Up | KeyCode::Char('k') => Action::Up,
            KeyCode::Down | KeyCode::Char('j') => Action::Down,
            KeyCode::PageUp => Action::PageUp,
            KeyCode::PageDown => Action::PageDown,
            KeyCode::Home => Action::First,
            KeyCode::End => Action::Last,
            KeyCode::Enter => Action::Open,
            KeyCode::Char('s') | KeyCode::Char('>') => Action::SortNext,
            KeyCode::Char('<') => Action::SortPrev,
            KeyCode::Char('S') => Action::SortReverse,
            KeyCode::Char('/') => Action::FilterStart,
            KeyCode::Char('g') => Action::Regroup,
            KeyCode::Char('t') => Action::ToggleWindow,
            KeyCode::Char(' ') => Action::Pause,
            KeyCode::Char('r') => Action::Reset,
            KeyCode::Char('?') | KeyCode::F(1) => Action::Help,
            _ => return None,
        })
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::Tick(b) => self.ingest(*b),
            Action::Ended(why) => self.ended = Some(why),
            Action::Failed(why) => self.failed = Some(why),
            Action::Up => self.move_selection(-1),
            Action::Down => self.move_selection(1),
            Action::PageUp => self.move_selection(-(self.page() as isize)),
            Action::PageDown => self.move_selection(self.page() as isize),
            Action::First => self.move_selection(isize::MIN / 2),
            Action::Last => self.move_selection(isize::MAX / 2),
            Action::Open => {
                self.screen = match self.screen {
                    Screen::Table if self.selected_index().is_some() => Screen::Detail,
                    Screen::Table => Screen::Table,
                    _ => Screen::Table,
                };
            }
            Action::Back => match self.screen {
                Screen::Detail | Screen::Help => self.screen = Screen::Table,
                Screen::Table if !self.filter.is_empty() => {
                    self.filter.clear();
                }
                Screen::Table => self.quit = true,
            },
            Action::Quit => self.quit = true,
            Action::SortNext | Action::SortPrev => {
                self.sort = self
                    .sort
                    .step(if action == Action::SortNext { 1 } else { -1 });
                self.descending = self.sort.natural_descending();
            }
            Action::SortReverse => self.descending = !self.descending,
            Action::FilterStart => self.editing_filter = true,
            Action::FilterInput(c) => self.filter.push(c),
            Action::FilterDelete => {
                self.filter.pop();
            }
            Action::FilterAccept => self.editing_filter = false,
            Action::FilterCancel => {
                self.editing_filter = false;
                self.filter.clear();
            }
            Action::Regroup => {
                // By site only when the data has call sites (`--sites`,
                // `--by site`).
                let sites = self.cur.as_ref().is_some_and(|c| !c.sites.is_empty());
                self.grouping = match self.grouping {
                    Grouping::Program => Grouping::Helper,
                    Grouping::Helper => Grouping::Netns,
                    Grouping::Netns => Grouping::Interface,
                    Grouping::Interface if sites => Grouping::Site,
                    Grouping::Interface | Grouping::Site => Grouping::Program,
                };
                // Row keys of another grouping name nothing here.
                self.selected = None;
                if self.screen == Screen::Detail {
                    self.screen = Screen::Table;
                }
            }
            Action::ToggleWindow => {
                self.window = match self.window {
                    Window::SinceReset => Window::LastInterval,
                    Window::LastInterval => Window::SinceReset,
                }
            }
            Action::Pause => {
                self.paused = !self.paused;
                if !self.paused {
                    if let Some(b) = self.pending.take() {
                        self.apply(b);
                    }
                }
            }
            Action::Reset => {
                if let Some(cur) = &self.cur {
                    self.base = Some(cur.clone());
                    self.run_leaks_since_base.clear();
                }
            }
            Action::Help => {
                if self.screen == Screen::Help {
                    self.screen = self.below_help;
                } else {
                    self.below_help = self.screen;
                    self.screen = Screen::Help;
                }
            }
            Action::Resize(w, h) => self.size = (w, h),
        }
        self.recompute();
    }

    fn ingest(&mut self, mut b: Reading) {
        for e in b.errors.drain(..) {
            if self.errors.len() == ERRORS_KEPT {
                self.errors.pop_front();
            }
            self.errors.push_back(e);
        }
        if self.paused {
            // Readings are cumulative: the newest stands for all of them,
            // but freed slots and run leaks add up.
            if let Some(p) = self.pending.take() {
                let mut freed = p.freed_slots;
                freed.extend(b.freed_slots.iter().copied());
                b.freed_slots = freed;
                let mut leaks = p.run_leaks;
                leaks.append(&mut b.run_leaks);
                b.run_leaks = leaks;
            }
            self.pending = Some(b);
        } else {
            self.apply(b);
        }
    }

    fn apply(&mut self, b: Reading) {
        self.readings += 1;
        // Slots freed since the previous reading start from zero in this
        // one: they leave every earlier reading.
        if let Some(base) = &mut self.base {
            base.snapshot.forget_slots(&b.freed_slots);
        }
        if let Some(mut prev) = self.cur.take() {
            prev.snapshot.forget_slots(&b.freed_slots);
            self.before = Some(prev);
        }
        if self.base.is_none() {
            self.base = Some(b.clone());
        }
        self.run_leaks_last.clear();
        for l in &b.run_leaks {
            let r = &l.reference;
            let k = (l.prog_id, r.helper, r.netns, r.site);
            *self.run_leaks_last.entry(k).or_default() += 1;
            *self.run_leaks_since_base.entry(k).or_default() += 1;
        }
        if let Some(before) = &self.before {
            let delta = b.snapshot.delta(&before.snapshot);
            let secs = secs_between(before.mono_ns(), b.mono_ns());
            self.last_delta = Some(delta.clone());
            self.push_history(delta, secs);
        }
        self.cur = Some(b);
    }

    fn push_history(&mut self, delta: Snapshot, secs: f64) {
        let s = match self.partial.take() {
            Some(mut p) => {
                merge_snapshot(&mut p.delta, &delta);
                p.secs += secs;
                p
            }
            None => Sample { delta, secs },
        };
        if s.secs + 1e-9 >= SAMPLE_MIN_S {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(s);
        } else {
            self.partial = Some(s);
        }
    }

    fn move_selection(&mut self, by: isize) {
        if self.rows.is_empty() {
            return;
        }
        let i = match self.selected_index() {
            Some(i) => (i as isize).saturating_add(by),
            None if by < 0 => self.rows.len() as isize - 1,
            None => 0,
        };
        let i = i.clamp(0, self.rows.len() as isize - 1) as usize;
        self.selected = Some(self.rows[i].key);
    }

    /// The window's delta, its length, and the reading it starts from.
    fn window_delta(&self) -> Option<(Snapshot, f64, &Reading)> {
        let cur = self.cur.as_ref()?;
        let start = match self.window {
            Window::SinceReset => self.base.as_ref()?,
            Window::LastInterval => self.before.as_ref().unwrap_or(cur),
        };
        Some((
            cur.snapshot.delta(&start.snapshot),
            secs_between(start.mono_ns(), cur.mono_ns()),
            start,
        ))
    }

    /// Recomputes rows, totals and the drill-down from the readings.
    fn recompute(&mut self) {
        let Some((wdelta, wsecs, start)) = self.window_delta() else {
            self.rows.clear();
            self.rows_total = 0;
            self.detail = None;
            return;
        };
        let Some(cur) = self.cur.as_ref() else {
            return;
        };
        let by = self.grouping;
        let stats = IntervalStats::compute(&wdelta, wsecs, &self.info.helpers, by, cur);

        // Calls per second over the last interval, by row.
        let mut rate: HashMap<RowKey, u64> = HashMap::new();
        let mut rate_secs = 0.0;
        let mut total_last = 0;
        if let (Some(before), Some(last)) = (&self.before, &self.last_delta) {
            rate_secs = secs_between(before.mono_ns(), cur.mono_ns());
            for (k, c) in &last.cells {
                *rate.entry(RowKey::of_cell(k, by)).or_default() += c.calls;
                total_last += c.calls;
            }
        }
        let per_s = |n: u64| {
            if rate_secs > 0.0 {
                n as f64 / rate_secs
            } else {
                0.0
            }
        };

        let slot_of_id: HashMap<u32, u32> = cur
            .programs
            .values()
            .filter(|p| p.id != 0)
            .map(|p| (p.id, p.slot))
            .collect();
        let out_now = cur
            .ledger
            .as_ref()
            .map(|l| ledger_counts(l, by, &slot_of_id, LEAK_AGE_NS));
        let out_start = start
            .ledger
            .as_ref()
            .map(|l| ledger_counts(l, by, &slot_of_id, u64::MAX));
        let run_leaks = match self.window {
            Window::SinceReset => &self.run_leaks_since_base,
            Window::LastInterval => &self.run_leaks_last,
        };
        let mut run_leak_rows: HashMap<RowKey, u64> = HashMap::new();
        for (&(id, helper, netns, site), &n) in run_leaks {
            if let Some(k) = ref_row(id, helper, netns, site, by, &slot_of_id) {
                *run_leak_rows.entry(k).or_default() += n;
            }
        }
        // Interface rows cannot carry ledger figures: the ledger does not
        // record the packet's device.
        let ledger_rows = by != Grouping::Interface;

        let mut rows: Vec<Row> = stats
            .helpers
            .iter()
            .filter_map(|r| {
                let key = RowKey::of_stats(r)?;
                let (now, aged) = out_now
                    .as_ref()
                    .map(|m| m.get(&key).copied().unwrap_or((0, 0)))
                    .unwrap_or((0, 0));
                // Outstanding and leaks need the current ledger; released
                // needs it at the window's start too (a recording scans it
                // rarely).
                let ledger = (ledger_rows && out_now.is_some()).then_some(());
                let at_start = out_start
                    .as_ref()
                    .filter(|_| ledger.is_some())
                    .map(|m| m.get(&key).map_or(0, |c| c.0));
                let lat = |v: u64| (r.calls > 0).then_some(v);
                Some(Row {
                    key,
                    place: place_label(r),
                    helper: key.helper(),
                    prog_id: r.program.as_ref().map(|p| p.id),
                    calls: r.calls,
                    calls_per_s: per_s(rate.get(&key).copied().unwrap_or(0)),
                    hit_pct: (r.calls > 0).then_some(r.hit_pct),
                    p50: lat(r.latency_ns.p50),
                    p99: lat(r.latency_ns.p99),
                    max: lat(r.latency_ns.max),
                    acquired: r.acquired,
                    // Whatever was acquired in the window and is no longer
                    // outstanding was released (readings of the maps and
                    // the ledger are instants apart: never below zero).
                    released: at_start.map(|s| (r.acquired + s).saturating_sub(now)),
                    outstanding: ledger.map(|()| now),
                    hold_p99: r.hold_ns.filter(|h| h.count > 0).map(|h| h.p99),
                    leaks: ledger.map(|()| aged + run_leak_rows.get(&key).copied().unwrap_or(0)),
                })
            })
            .collect();
        self.rows_total = rows.len();
        rows.retain(|r| r.matches_filter(&self.filter));
        let (sort, desc) = (self.sort, self.descending);
        rows.sort_by(|a, b| {
            let o = if sort == Column::Name {
                (&a.place, a.helper.function()).cmp(&(&b.place, b.helper.function()))
            } else {
                a.sort_value(sort).total_cmp(&b.sort_value(sort))
            };
            let o = if desc { o.reverse() } else { o };
            // Ties in a stable, readable order.
            o.then_with(|| a.key.cmp(&b.key))
        });
        self.rows = rows;
        if self.selected_index().is_none() {
            self.selected = self.rows.first().map(|r| r.key);
        }

        let c = &wdelta.counters;
        self.totals = Totals {
            calls_per_s: per_s(total_last),
            drops: c.unmatched_exit.iter().sum::<u64>()
                + c.evicted_entry.iter().sum::<u64>()
                + wdelta.recursion_misses
                + c.run_table_full
                + c.run_refs_full
                + c.events_dropped,
            overflows: c.hists_full
                + c.ledger_full
                + wdelta.cells.values().map(|c| c.hist.overflow).sum::<u64>(),
            outstanding: cur
                .ledger
                .as_ref()
                .map(|l| l.refs.iter().map(|r| r.count as u64).sum()),
            leaks: cur
                .ledger
                .as_ref()
                .map(|l| aged_refs(l, LEAK_AGE_NS) + run_leaks.values().sum::<u64>()),
            window_s: wsecs,
            probe_cpu_pct: self
                .info
                .probe_ns_per_lookup
                .map(|ns| per_s(total_last) * ns / 1e7),
            balance: Some(stats.balance.clone()),
        };
        self.detail = if self.screen == Screen::Detail
            || (self.screen == Screen::Help && self.below_help == Screen::Detail)
        {
            self.selected.map(|k| self.compute_detail(k, &wdelta))
        } else {
            None
        };
    }

    fn compute_detail(&self, key: RowKey, wdelta: &Snapshot) -> Detail {
        let mut by_outcome: [Cell; Outcome::COUNT] = Default::default();
        for (k, c) in &wdelta.cells {
            if key.matches(k) {
                by_outcome[k.outcome.index()].merge(c);
            }
        }
        let mut all = Cell::default();
        for c in &by_outcome {
            all.merge(c);
        }
        let hold = match key {
            RowKey::Program { slot, .. } => {
                let h = wdelta.holds.get(&slot).cloned().unwrap_or_default();
                let p = h.percentiles();
                Some((h, p))
            }
            _ => None,
        };
        let cur = self.cur.as_ref();
        let slot_of_id: HashMap<u32, u32> = cur
            .map(|c| {
                c.programs
                    .values()
                    .filter(|p| p.id != 0)
                    .map(|p| (p.id, p.slot))
                    .collect()
            })
            .unwrap_or_default();
        let ledger = cur.and_then(|c| c.ledger.as_ref());
        let (refs, refs_total) = match ledger {
            Some(l) if !matches!(key, RowKey::Interface { .. }) => {
                let mut v: Vec<OutstandingRef> = l
                    .refs
                    .iter()
                    .filter(|r| {
                        ref_row(
                            r.prog_id,
                            r.helper,
                            r.netns,
                            r.site,
                            self.grouping,
                            &slot_of_id,
                        ) == Some(key)
                    })
                    .cloned()
                    .collect();
                v.sort_by_key(|r| r.acquired_ns);
                let total = v.iter().map(|r| r.count as u64).sum();
                v.truncate(REFS_LISTED);
                (Some(v), total)
            }
            _ => (None, 0),
        };
        let mut calls_series = Vec::with_capacity(self.history.len());
        let mut p99_series = Vec::with_capacity(self.history.len());
        let mut span = 0.0;
        for s in &self.history {
            let mut h = LogHist::default();
            for (k, c) in &s.delta.cells {
                if key.matches(k) {
                    h.merge(&c.hist);
                }
            }
            let rate = if s.secs > 0.0 {
                h.count as f64 / s.secs
            } else {
                0.0
            };
            calls_series.push(rate.round() as u64);
            p99_series.push(h.quantile(0.99));
            span += s.secs;
        }
        Detail {
            latency_pct: all.hist.percentiles(),
            latency: all.hist,
            outcomes: std::array::from_fn(|i| by_outcome[i].calls),
            hits_by_class: all.hits,
            acquired: all.acquired.iter().sum(),
            hold,
            refs,
            refs_total,
            ledger_now_ns: ledger.map_or(0, |l| l.now_ns),
            sample_s: if self.history.is_empty() {
                SAMPLE_MIN_S
            } else {
                span / self.history.len() as f64
            },
            calls_series,
            p99_series,
        }
    }
}

fn secs_between(a_ns: u64, b_ns: u64) -> f64 {
    b_ns.saturating_sub(a_ns) as f64 / 1e9
}

/// How a row's first column reads.
fn place_label(r: &HelperStats) -> String {
    if let Some(site) = &r.site {
        return crate::model::words::site_label(site);
    }
    if let Some(p) = &r.program {
        return if p.id == 0 {
            p.name.clone()
        } else {
            format!("{}[{}]", p.name, p.id)
        };
    }
    match &r.place {
        None => String::new(),
        Some(place) => match (place.ifindex, &place.interface) {
            (None, _) => place.netns.to_string(),
            (Some(0), _) => format!("-@{}", place.netns),
            (Some(_), Some(name)) => format!("{name}@{}", place.netns),
            (Some(i), None) => format!("if{i}@{}", place.netns),
        },
    }
}

/// The row a ledger reference (or run leak) belongs to.
fn ref_row(
    prog_id: u32,
    helper: Helper,
    netns: u32,
    site: u64,
    by: Grouping,
    slot_of_id: &HashMap<u32, u32>,
) -> Option<RowKey> {
    match by {
        Grouping::Helper => Some(RowKey::Helper(helper)),
        Grouping::Site => Some(RowKey::Site { site, helper }),
        Grouping::Program => {
            let slot = if prog_id == 0 {
                UNATTRIBUTED
            } else {
                *slot_of_id.get(&prog_id)?
            };
            Some(RowKey::Program { slot, helper })
        }
        Grouping::Netns => Some(RowKey::Netns { netns, helper }),
        Grouping::Interface => None,
    }
}

/// References outstanding by row: (all, those at least `age_ns` old).
fn ledger_counts(
    l: &LedgerScan,
    by: Grouping,
    slot_of_id: &HashMap<u32, u32>,
    age_ns: u64,
) -> HashMap<RowKey, (u64, u64)> {
    let mut m: HashMap<RowKey, (u64, u64)> = HashMap::new();
    for r in &l.refs {
        if let Some(k) = ref_row(r.prog_id, r.helper, r.netns, r.site, by, slot_of_id) {
            let e = m.entry(k).or_default();
            e.0 += r.count as u64;
            if l.now_ns.saturating_sub(r.acquired_ns) >= age_ns {
                e.1 += r.count as u64;
            }
        }
    }
    m
}

fn aged_refs(l: &LedgerScan, age_ns: u64) -> u64 {
    l.older_than(age_ns).map(|r| u64::from(r.count)).sum()
}

/// Adds one delta to another (history samples shorter than
/// `SAMPLE_MIN_S` are merged).
fn merge_snapshot(acc: &mut Snapshot, d: &Snapshot) {
    for (k, c) in &d.cells {
        acc.cells.entry(*k).or_default().merge(c);
    }
    for (k, h) in &d.holds {
        acc.holds.entry(*k).or_default().merge(h);
    }
    acc.counters.merge(&d.counters);
    acc.recursion_misses += d.recursion_misses;
    acc.mono_ns = d.mono_ns;
}
