package rexctl

import (
	"fmt"
	"io"
	"strings"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"

	pb "github.com/fleet-ai/ray-executor/shared/gen/fleet/ray_executor/v1"
)

// The live display of `watch` on a terminal: a bubbletea program fed the stream's events.

type (
	eventMsg     struct{ ev *pb.LifecycleEvent }
	streamEndMsg struct{ err error }
	tickMsg      time.Time
)

// styles of the display: plain ANSI colours, so nothing queries the terminal.
type styles struct {
	title, dim, ok, bad, warn, run lipgloss.Style
}

func newStyles(r *lipgloss.Renderer) styles {
	return styles{
		title: r.NewStyle().Bold(true),
		dim:   r.NewStyle().Faint(true),
		ok:    r.NewStyle().Foreground(lipgloss.Color("2")),
		bad:   r.NewStyle().Foreground(lipgloss.Color("1")),
		warn:  r.NewStyle().Foreground(lipgloss.Color("3")),
		run:   r.NewStyle().Foreground(lipgloss.Color("6")),
	}
}

// liveRenderer styles for out: colours as the terminal ($TERM) has them, none under NO_COLOR.
func liveRenderer(out io.Writer, getenv func(string) string) *lipgloss.Renderer {
	r := lipgloss.NewRenderer(out)
	if getenv("NO_COLOR") != "" {
		r.SetColorProfile(termenv.Ascii)
	}
	return r
}

// newLiveProgram is the display's program: input (nil: none) for q and Ctrl-C, drawn on out
// inline (no alternate screen, so the final state stays on the terminal).
func newLiveProgram(m tea.Model, input io.Reader, out io.Writer) *tea.Program {
	return tea.NewProgram(m, tea.WithInput(input), tea.WithOutput(out))
}

type watchModel struct {
	p           *progress
	st          styles
	now         func() time.Time
	width       int
	height      int
	err         error // the stream's end, when it was not the terminal event
	interrupted bool
	done        bool
}

func (m *watchModel) Init() tea.Cmd { return tick() }

func tick() tea.Cmd {
	return tea.Tick(time.Second/4, func(t time.Time) tea.Msg { return tickMsg(t) })
}

func (m *watchModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "ctrl+c", "q", "esc":
			m.interrupted, m.done = true, true
			return m, tea.Quit
		}
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
	case eventMsg:
		m.p.apply(msg.ev)
	case streamEndMsg:
		m.err, m.done = msg.err, true
		return m, tea.Quit
	case tickMsg:
		if !m.done {
			return m, tick()
		}
	}
	return m, nil
}

func (m *watchModel) View() string {
	p, st := m.p, m.st
	var b strings.Builder
	line := func(s string) {
		b.WriteString(m.fit(s))
		b.WriteByte('\n')
	}
	title := "deliberation " + clean(p.id, 128)
	if p.taskID != "" {
		title += "  task " + clean(p.taskID, 128)
	}
	line(st.title.Render(title))
	pending, running, done, failed := p.counts()
	total := len(p.agents)
	line(fmt.Sprintf("%s  %s  %d/%d agents finished  elapsed %s",
		m.stateStyle(p.state()).Render(fmt.Sprintf("%-9s", p.state())), bar(done+failed, total, 20), done+failed, total, clock(p.elapsed(m.now()))))
	line(fmt.Sprintf("pending %d  %s  %s  %s", pending,
		st.run.Render(fmt.Sprintf("running %d", running)), st.ok.Render(fmt.Sprintf("done %d", done)), st.bad.Render(fmt.Sprintf("failed %d", failed))))
	rows := len(p.agents)
	if m.height > 0 && rows > m.height-6 {
		rows = max(m.height-6, 1)
	}
	for i, a := range p.agents[:rows] {
		id := a.id
		if id == "" {
			id = fmt.Sprintf("agent #%d", i+1)
		}
		detail := ""
		switch a.state {
		case agentDone:
			detail = fmt.Sprintf("%-6s score %.2f", ms(a.durationMS), a.score)
		case agentFailed:
			detail = fmt.Sprintf("%-6s %s", ms(a.durationMS), clean(a.errText, 200))
		}
		line(fmt.Sprintf("  %3d  %-16s %-14s %s  %s", i+1, clean(id, 16), clean(a.model, 14),
			m.stateStyle(a.state).Render(fmt.Sprintf("%-9s", a.state)), detail))
	}
	if rows < len(p.agents) {
		line(st.dim.Render(fmt.Sprintf("  … %d more agents", len(p.agents)-rows)))
	}
	switch {
	case p.outcome != "":
		end := fmt.Sprintf("%s in %s", p.outcome, span(p.elapsed(m.now())))
		if p.detail != "" {
			end += ": " + clean(p.detail, 200)
		}
		line(m.stateStyle(p.outcome).Render(end))
	case m.err != nil:
		line(st.bad.Render("watch ended: " + clean(m.err.Error(), 200)))
	case m.interrupted:
		line(st.warn.Render("stopped watching (the deliberation goes on)"))
	default:
		line(st.dim.Render("watching… q or Ctrl-C stops watching (the deliberation goes on)"))
	}
	return b.String()
}

func (m *watchModel) stateStyle(s string) lipgloss.Style {
	switch s {
	case agentDone, "completed":
		return m.st.ok
	case agentFailed: // also the deliberation's "failed"
		return m.st.bad
	case agentRunning:
		return m.st.run
	case "cancelled":
		return m.st.warn
	}
	return m.st.dim
}

// fit cuts a rendered line to the terminal's width (styles included).
func (m *watchModel) fit(s string) string {
	if m.width <= 0 {
		return s
	}
	return lipgloss.NewStyle().MaxWidth(m.width).Render(s)
}

// bar is a progress bar of n out of total in width cells.
func bar(n, total, width int) string {
	filled := 0
	if total > 0 {
		filled = n * width / total
	}
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

// span renders a finished deliberation's time: 412ms, 12.3s, 3m4s.
func span(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// clock renders a duration as mm:ss (h:mm:ss past an hour).
func clock(d time.Duration) string {
	s := int(d / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%02d:%02d", s/60, s%60)
}
