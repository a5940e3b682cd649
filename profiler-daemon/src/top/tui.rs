//! The terminal view: the screen's lifecycle, the keys, and the loop that samples every
//! interval. Drawing is in `view`. The terminal is restored however the loop ends (return,
//! error, or panic: ratatui's hook).
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::DefaultTerminal;

use super::interval::Resolve;
use super::sampler::Sampler;
use super::{columns, view, Interval, SortBy, TopOptions};
use crate::analysis::report::{GroupBy, Row};

/// How often the session is serviced (and keys read) between samples.
const TICK: Duration = Duration::from_millis(20);

/// Everything the view shows.
pub(super) struct Ui<'a> {
    pub by: GroupBy,
    pub sort: SortBy,
    pub every: Duration,
    pub label: String,
    pub symbols: bool,
    pub resolve: Resolve<'a>,
    pub interval: Option<Interval>,
    /// `interval`'s rows under `by` and `sort`.
    pub rows: Vec<Row>,
    pub selected: usize,
    /// The selected row's key: the selection follows its row when the order changes.
    selected_key: Option<String>,
    /// The function whose RIPs and callers are shown instead of the table.
    pub detail: Option<String>,
    /// The answer to the last key, if it needs one.
    pub message: Option<String>,
    /// Why the numbers no longer change (the command or PID ended).
    pub ended: Option<String>,
}

enum Action {
    Quit,
    Redraw,
    Nothing,
}

impl<'a> Ui<'a> {
    fn new(opts: &TopOptions, resolve: Resolve<'a>, label: &str) -> Ui<'a> {
        Ui {
            by: opts.by,
            sort: opts.sort,
            every: opts.interval,
            label: label.to_string(),
            symbols: opts.symbols.is_some(),
            resolve,
            interval: None,
            rows: Vec::new(),
            selected: 0,
            selected_key: None,
            detail: None,
            message: None,
            ended: None,
        }
    }

    fn set_interval(&mut self, iv: Interval) {
        self.interval = Some(iv);
        self.refresh_rows();
    }

    fn refresh_rows(&mut self) {
        let Some(iv) = &self.interval else { return };
        self.rows = iv.rows(self.by, self.sort, self.resolve);
        if let Some(i) = self.selected_key.as_ref().and_then(|k| self.rows.iter().position(|r| columns::row_key(iv, r, self.by) == *k)) {
            self.selected = i;
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }

    fn select(&mut self, i: usize) {
        self.selected = i.min(self.rows.len().saturating_sub(1));
        self.selected_key = match (&self.interval, self.rows.get(self.selected)) {
            (Some(iv), Some(r)) => Some(columns::row_key(iv, r, self.by)),
            _ => None,
        };
    }

    fn group_by(&mut self, by: GroupBy) {
        if by == GroupBy::Function && !self.symbols {
            self.message = Some("no guest symbols: start top with --vmlinux ELF or --kallsyms FILE to group by function".into());
            return;
        }
        self.by = by;
        self.detail = None;
        self.selected_key = None;
        self.selected = 0;
        self.refresh_rows();
    }

    fn on_key(&mut self, k: KeyEvent) -> Action {
        self.message = None;
        match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => return Action::Quit,
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('f') => self.group_by(GroupBy::Function),
            KeyCode::Char('r') => self.group_by(GroupBy::Reason),
            KeyCode::Char('p') => self.group_by(GroupBy::Port),
            KeyCode::Char('v') => self.group_by(GroupBy::Vcpu),
            KeyCode::Char('i') => self.group_by(GroupBy::Rip),
            KeyCode::Char('s') => {
                self.sort = self.sort.toggled();
                self.refresh_rows();
            }
            KeyCode::Up | KeyCode::Char('k') => self.select(self.selected.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.select(self.selected + 1),
            KeyCode::PageUp => self.select(self.selected.saturating_sub(10)),
            KeyCode::PageDown => self.select(self.selected + 10),
            KeyCode::Home => self.select(0),
            KeyCode::End => self.select(usize::MAX),
            KeyCode::Esc if self.detail.is_some() => self.detail = None,
            KeyCode::Enter if self.detail.is_some() => self.detail = None,
            KeyCode::Enter => self.open_detail(),
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    fn open_detail(&mut self) {
        if self.by != GroupBy::Function {
            self.message = Some(if self.symbols { "details are per function: press f, then Enter on a function" } else { "details are per function: they need --vmlinux or --kallsyms" }.into());
            return;
        }
        match self.rows.get(self.selected).map(|r| r.function.clone()) {
            Some(Some(f)) => self.detail = Some(f),
            Some(None) => self.message = Some("no symbol for this address".into()),
            None => {}
        }
    }
}

/// The terminal in raw mode on the alternate screen, restored on drop.
struct Screen(DefaultTerminal);

impl Screen {
    fn enter() -> Result<Screen> {
        match ratatui::try_init() {
            Ok(t) => Ok(Screen(t)),
            Err(e) => {
                // Raw mode may be on even though the alternate screen failed.
                ratatui::restore();
                Err(e).context("cannot set up the terminal")
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the view until `q`/Ctrl-C, SIGINT/SIGTERM or `iterations`. When the command or PID
/// ends, its last interval stays on screen until `q`.
pub fn run(sampler: &mut Sampler, opts: &TopOptions, stop: &AtomicBool) -> Result<()> {
    let resolve = |rip: u64| opts.symbols.as_ref().and_then(|s| s.function_name(rip));
    let mut ui = Ui::new(opts, &resolve, sampler.label());
    let mut screen = Screen::enter()?;
    let mut due = sampler.started() + opts.interval;
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        let mut last = false;
        if sampler.is_live() {
            let now = Instant::now();
            if let Some(end) = sampler.poll() {
                ui.set_interval(sampler.sample_last()?);
                ui.ended = Some(format!("{}: its last interval stays on screen", end.describe()));
                dirty = true;
            } else if now >= due {
                let iv = sampler.sample()?;
                last = opts.iterations.is_some_and(|n| iv.index >= n);
                ui.set_interval(iv);
                dirty = true;
                due += opts.interval;
                if due <= now {
                    due = now + opts.interval;
                }
            }
        }
        if dirty {
            screen.0.draw(|f| view::draw(f, &ui)).context("drawing the view")?;
            dirty = false;
        }
        if last {
            break;
        }
        let wait = if sampler.is_live() { TICK.min(due.saturating_duration_since(Instant::now())) } else { Duration::from_millis(200) };
        if event::poll(wait).context("reading the terminal")? {
            match event::read().context("reading the terminal")? {
                Event::Key(k) if k.kind != KeyEventKind::Release => match ui.on_key(k) {
                    Action::Quit => break,
                    Action::Redraw => dirty = true,
                    Action::Nothing => {}
                },
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}
