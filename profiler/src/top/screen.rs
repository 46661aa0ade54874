//! `top` on a terminal: a thread of its own draws each snapshot (ratatui on crossterm) and turns
//! keys into the session's controls, so keys answer at once, not at the next interval.

use std::{
    sync::mpsc::{Receiver, TryRecvError},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table, TableState},
};
use tokio::sync::mpsc::UnboundedSender;

use super::snapshot::{Snapshot, SortKey};
use crate::{analysis::histogram::format_ns, collector::Control, text::shown};

/// How long the screen waits for a key before it looks for a new snapshot.
const KEY_POLL: Duration = Duration::from_millis(50);

/// The terminal, taken over (raw mode, alternate screen) until this is dropped.
pub struct Screen {
    thread: Option<JoinHandle<Result<()>>>,
}

impl Screen {
    /// Takes over the terminal and draws every snapshot that comes, until the snapshots' sender
    /// or the controls' receiver is gone. ratatui's panic hook gives the terminal back on a panic.
    pub fn start(snapshots: Receiver<Snapshot>, controls: UnboundedSender<Control>, sort: SortKey) -> Result<Screen> {
        let terminal = ratatui::try_init().context("cannot take over the terminal")?;
        let thread = std::thread::Builder::new()
            .name("top-screen".into())
            .spawn(move || View::new(sort).run(terminal, &snapshots, &controls));
        match thread {
            Ok(thread) => Ok(Screen { thread: Some(thread) }),
            Err(error) => {
                ratatui::restore();
                Err(anyhow!(error).context("cannot start the screen"))
            }
        }
    }

    /// Waits for the screen to end, gives the terminal back, and says how the screen ended.
    pub fn finish(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let result = thread.join();
        ratatui::try_restore().context("cannot give the terminal back")?;
        result.map_err(|_| anyhow!("the screen failed"))?
    }
}

impl Drop for Screen {
    /// On every way out (an error, a panic unwinding), the terminal is given back.
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// What the screen shows and how.
pub struct View {
    current: Option<Snapshot>,
    sort: SortKey,
    paused: bool,
    /// The selected process, by pid, so that the selection follows it when rows reorder.
    selected: Option<u32>,
    /// The process the kernel records alone, and its name.
    focus: Option<(u32, String)>,
    stopping: bool,
}

impl View {
    pub fn new(sort: SortKey) -> View {
        View { current: None, sort, paused: false, selected: None, focus: None, stopping: false }
    }

    fn run(
        mut self,
        mut terminal: DefaultTerminal,
        snapshots: &Receiver<Snapshot>,
        controls: &UnboundedSender<Control>,
    ) -> Result<()> {
        let mut dirty = true;
        loop {
            if controls.is_closed() {
                return Ok(());
            }
            loop {
                match snapshots.try_recv() {
                    Ok(snapshot) if !self.paused => {
                        self.current = Some(snapshot);
                        dirty = true;
                    }
                    Ok(_) => {}
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            if dirty {
                terminal.draw(|frame| self.draw(frame)).context("cannot draw")?;
                dirty = false;
            }
            if event::poll(KEY_POLL).context("cannot read the terminal")? {
                match event::read().context("cannot read the terminal")? {
                    Event::Key(key) if key.kind == KeyEventKind::Press => {
                        if let Some(control) = self.key(key) {
                            // The session may be ending already; then there is nobody to tell.
                            let _ = controls.send(control);
                        }
                        dirty = true;
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    }

    /// Handles a key; returns what the session must do about it.
    pub fn key(&mut self, key: KeyEvent) -> Option<Control> {
        let rows: Vec<u32> =
            self.current.as_ref().map_or_else(Vec::new, |s| s.sorted(self.sort).iter().map(|row| row.tgid).collect());
        let position = self.selected.and_then(|pid| rows.iter().position(|&p| p == pid));
        // Raw mode turns Ctrl-C into a key, not SIGINT.
        let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if key.code == KeyCode::Char('q') || ctrl_c {
            self.stopping = true;
            return Some(Control::Stop);
        }
        match key.code {
            KeyCode::Char('c') => self.sort = SortKey::Cpu,
            KeyCode::Char('r') => self.sort = SortKey::Runq,
            KeyCode::Char('s') => self.sort = SortKey::Syscalls,
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Down => {
                let next = position.map_or(0, |p| (p + 1).min(rows.len().saturating_sub(1)));
                self.selected = rows.get(next).copied();
            }
            KeyCode::Up => self.selected = rows.get(position.map_or(0, |p| p.saturating_sub(1))).copied(),
            KeyCode::Enter => {
                let pid = self.selected?;
                let comm = self.current.as_ref()?.processes.iter().find(|row| row.tgid == pid)?.comm.clone();
                self.focus = Some((pid, comm));
                return Some(Control::Focus(Some(pid)));
            }
            KeyCode::Esc => {
                self.focus.take()?;
                return Some(Control::Focus(None));
            }
            _ => {}
        }
        None
    }

    pub fn draw(&self, frame: &mut Frame<'_>) {
        let [header, functions, processes, footer] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Percentage(40),
            Constraint::Min(5),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(Paragraph::new(self.header()), header);
        match &self.current {
            Some(snapshot) => {
                self.draw_functions(frame, snapshot, functions);
                self.draw_processes(frame, snapshot, processes);
            }
            None => frame.render_widget(Paragraph::new("waiting for the first interval…"), functions),
        }
        let keys =
            "q quit · p pause · c/r/s sort by CPU, run queue, syscalls · ↑↓ select · Enter focus on it · Esc all";
        frame.render_widget(Paragraph::new(keys).style(Style::new().add_modifier(Modifier::DIM)), footer);
    }

    fn header(&self) -> Vec<Line<'static>> {
        let first = match &self.current {
            Some(s) => format!(
                "profiler top · {} CPUs · {:.0} samples/s · {} dropped · {} programs ({}) · interval {:.2}s · up {}s",
                s.cpus,
                s.samples_per_second(),
                s.dropped,
                s.programs,
                s.probes.join(", "),
                s.length.as_secs_f64(),
                s.elapsed.as_secs(),
            ),
            None => "profiler top".into(),
        };
        let focus = match &self.focus {
            Some((pid, comm)) => format!("only {pid} {} (Esc: all)", shown(comm)),
            None => "all processes".into(),
        };
        let mut second = format!("sorted by {} · {focus}", self.sort.name());
        if self.paused {
            second.push_str(" · PAUSED (p resumes)");
        }
        if self.stopping {
            second.push_str(" · stopping…");
        }
        vec![Line::from(first), Line::from(second)]
    }

    fn draw_functions(&self, frame: &mut Frame<'_>, snapshot: &Snapshot, area: Rect) {
        let rows = snapshot.functions.iter().map(|f| {
            Row::new([
                format!("{:5.1}%", f.self_percent),
                // perf top's marks: [k] kernel, [.] user.
                if f.kernel { "[k]" } else { "[.]" }.to_string(),
                shown(&f.function).into_owned(),
                shown(&f.module).into_owned(),
            ])
        });
        let widths = [Constraint::Length(7), Constraint::Length(3), Constraint::Fill(3), Constraint::Fill(1)];
        let table = Table::new(rows, widths)
            .header(Row::new(["SELF", "", "FUNCTION", "MODULE"]).style(Style::new().add_modifier(Modifier::BOLD)))
            .block(Block::bordered().title(if snapshot.probes.contains(&"cpu") {
                " hottest functions "
            } else {
                " hottest functions: none without the cpu probe "
            }));
        frame.render_widget(table, area);
    }

    fn draw_processes(&self, frame: &mut Frame<'_>, snapshot: &Snapshot, area: Rect) {
        let sorted = snapshot.sorted(self.sort);
        let dash = || "-".to_string();
        let rows = sorted.iter().map(|row| {
            Row::new([
                row.tgid.to_string(),
                shown(&row.comm).into_owned(),
                row.cpu_percent.map_or_else(dash, |c| format!("{c:.1}")),
                row.runq_p50_ns.map_or_else(dash, format_ns),
                row.runq_p99_ns.map_or_else(dash, format_ns),
                format!("{:.0}", row.syscalls_per_second),
                row.slowest_syscall.as_ref().map_or_else(dash, |(name, p99)| format!("{name} {}", format_ns(*p99))),
            ])
        });
        let widths = [
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Fill(1),
        ];
        let slowest =
            if snapshot.syscalls_counted_only { "SYSCALLS COUNTED, NOT TIMED" } else { "SLOWEST SYSCALL (P99)" };
        let header = Row::new(["PID", "COMMAND", "%CPU", "RUNQ P50", "RUNQ P99", "SYSCALLS/S", slowest]);
        let table = Table::new(rows, widths)
            .header(header.style(Style::new().add_modifier(Modifier::BOLD)))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .block(Block::bordered().title(" processes (RUNQ P99 from 100 waits in the interval) "));
        let mut state = TableState::default()
            .with_selected(self.selected.and_then(|pid| sorted.iter().position(|row| row.tgid == pid)));
        frame.render_stateful_widget(table, area, &mut state);
    }
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::top::snapshot::tests::example;

    fn screen(view: &View) -> String {
        let mut terminal = Terminal::new(TestBackend::new(160, 45)).unwrap();
        terminal.draw(|frame| view.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        let cells: Vec<&str> = buffer.content().iter().map(|cell| cell.symbol()).collect();
        cells.chunks(width).map(|line| line.concat() + "\n").collect()
    }

    fn press(view: &mut View, code: KeyCode) -> Option<Control> {
        view.key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn draws_functions_processes_and_the_header() {
        let mut view = View::new(SortKey::Cpu);
        assert!(screen(&view).contains("waiting for the first interval"));
        view.current = Some(example());
        let text = screen(&view);
        for expected in
            ["2 CPUs", "200 samples/s", "7 programs (sched, syscalls, cpu)", "sorted by CPU", "all processes"]
        {
            assert!(text.contains(expected), "{expected:?} missing:\n{text}");
        }
        assert!(text.contains("[k] do_syscall_64") && text.contains("[.] hot_seventy"), "{text}");
        // The name's newline is shown escaped: it cannot break the table.
        assert!(text.contains("work\\x0aload") && text.contains("read 100.4µs"), "{text}");
    }

    #[test]
    fn keys_sort_select_focus_and_quit() {
        let mut view = View::new(SortKey::Cpu);
        view.current = Some(example());
        assert_eq!(press(&mut view, KeyCode::Enter), None, "nothing selected yet");
        assert_eq!(press(&mut view, KeyCode::Char('r')), None);
        assert!(screen(&view).contains("sorted by run-queue latency"));
        // By run-queue latency, process 20 comes first.
        assert_eq!(press(&mut view, KeyCode::Down), None);
        assert_eq!(press(&mut view, KeyCode::Down), None);
        assert_eq!(press(&mut view, KeyCode::Down), None, "the selection stops at the last row");
        assert_eq!(press(&mut view, KeyCode::Enter), Some(Control::Focus(Some(10))));
        assert!(screen(&view).contains("only 10 work\\x0aload (Esc: all)"));
        assert_eq!(press(&mut view, KeyCode::Up), None);
        assert_eq!(view.selected, Some(20));
        assert_eq!(press(&mut view, KeyCode::Esc), Some(Control::Focus(None)));
        assert_eq!(press(&mut view, KeyCode::Esc), None, "nothing to clear");
        assert_eq!(press(&mut view, KeyCode::Char('p')), None);
        assert!(screen(&view).contains("PAUSED"));
        assert_eq!(view.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Some(Control::Stop));
        assert_eq!(press(&mut view, KeyCode::Char('q')), Some(Control::Stop));
    }
}
