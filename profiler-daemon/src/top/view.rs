//! Drawing the terminal view (ratatui): three header lines, the table (or a function's RIPs
//! and callers), and the key help on the last line. Plain text without borders, so every
//! column gets the width and a copied screen reads like the batch tables.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table, TableState};
use ratatui::Frame;

use super::columns;
use super::tui::Ui;
use crate::analysis::report::GroupBy;

const HELP: &str = "q quit  f function  r reason  p port  v vCPU  i RIP  s sort  ↑↓ move  Enter RIPs+callers";
/// Without symbols there are no functions (nor details): the help says what `f` needs.
const HELP_NO_SYMBOLS: &str = "q quit  f function (needs --vmlinux/--kallsyms)  r reason  p port  v vCPU  i RIP  s sort  ↑↓ move";
const DETAIL_HELP: &str = "Esc/Enter back  q quit  s sort  f/r/p/v/i group";

pub(super) fn draw(f: &mut Frame, ui: &Ui) {
    let [head, body, help] = Layout::vertical([Constraint::Length(3), Constraint::Min(0), Constraint::Length(1)]).areas(f.area());
    f.render_widget(Paragraph::new(head_lines(ui)), head);
    match &ui.detail {
        None => draw_rows(f, body, ui),
        Some(function) => draw_detail(f, body, ui, function),
    }
    let keys = match (&ui.detail, ui.symbols) {
        (Some(_), _) => DETAIL_HELP,
        (None, true) => HELP,
        (None, false) => HELP_NO_SYMBOLS,
    };
    f.render_widget(Paragraph::new(keys).reversed(), help);
}

fn head_lines<'a>(ui: &Ui) -> Vec<Line<'a>> {
    // The target last: a long command line is what the terminal cuts off.
    let title = format!("kvmprof top | by {}, sorted by {} | every {} s | {}", ui.by.name(), ui.sort.name(), ui.every.as_secs_f64(), ui.label);
    let (summary, state) = match &ui.interval {
        Some(iv) => (columns::summary(iv), format!("interval {}: {:.2} s, t={:.1} s", iv.index, iv.secs, iv.at_secs)),
        None => ("waiting for the first interval...".into(), String::new()),
    };
    let status = match (&ui.message, &ui.ended) {
        (Some(m), _) => Line::from(m.clone()).yellow(),
        (None, Some(e)) => Line::from(format!("{state} | {e}")),
        (None, None) => Line::from(state),
    };
    vec![Line::from(title).bold(), Line::from(summary), status]
}

/// A borderless table: rate columns right-aligned and as wide as their widest cell, text
/// columns likewise except the last, which takes the rest of the line.
fn table<'a>(header: &[&str], rows: Vec<Vec<String>>, numeric: usize) -> Table<'a> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let last = widths.len() - 1;
    let constraints: Vec<Constraint> = widths.iter().enumerate().map(|(i, w)| if i == last { Constraint::Fill(1) } else { Constraint::Length(*w as u16) }).collect();
    let cell = |i: usize, s: String| if i < numeric { Cell::from(Line::from(s).right_aligned()) } else { Cell::from(s) };
    let head = TableRow::new(header.iter().enumerate().map(|(i, h)| cell(i, h.to_string()))).bold();
    let body = rows.into_iter().map(|r| TableRow::new(r.into_iter().enumerate().map(|(i, s)| cell(i, s))));
    Table::new(body, constraints).header(head).column_spacing(2)
}

fn draw_rows(f: &mut Frame, area: Rect, ui: &Ui) {
    let Some(iv) = &ui.interval else { return };
    if ui.rows.is_empty() {
        f.render_widget(Paragraph::new("(no exits in this interval)"), area);
        return;
    }
    let cells = ui.rows.iter().map(|r| columns::row_cells(iv, r, ui.by)).collect();
    let t = table(&columns::header(ui.by), cells, columns::RATES.len()).row_highlight_style(Style::new().reversed());
    f.render_stateful_widget(t, area, &mut TableState::default().with_selected(Some(ui.selected)));
}

fn draw_detail(f: &mut Frame, area: Rect, ui: &Ui, function: &str) {
    let Some(iv) = &ui.interval else { return };
    let [rip_title, rips, caller_title, callers] =
        Layout::vertical([Constraint::Length(1), Constraint::Percentage(50), Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    f.render_widget(Paragraph::new(format!("{function}: its RIPs in this interval (Time % = share of its exit time)")).bold(), rip_title);
    let rip_rows: Vec<Vec<String>> = iv.function_rips(function, ui.sort, ui.resolve).iter().map(|r| columns::row_cells(iv, r, GroupBy::Rip)).collect();
    if rip_rows.is_empty() {
        f.render_widget(Paragraph::new("(no exits in this interval)"), rips);
    } else {
        f.render_widget(table(&columns::header(GroupBy::Rip), rip_rows, columns::RATES.len()), rips);
    }
    f.render_widget(Paragraph::new(format!("{function}: its callers")).bold(), caller_title);
    let caller_rows: Vec<Vec<String>> = iv.callers_of(function, ui.sort, ui.resolve).iter().map(|c| columns::caller_cells(iv, c)).collect();
    if !caller_rows.is_empty() {
        f.render_widget(table(&columns::CALLER_HEADER, caller_rows, 2), callers);
    }
}
