package bench

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

func numCPU() int { return runtime.NumCPU() }

// Median of xs (NaN when empty); xs is not modified.
func Median(xs []float64) float64 { return Quantile(xs, 0.5) }

// Quantile returns the q-quantile (0..1) of xs by linear interpolation
// between closest ranks; NaN when empty. xs is not modified.
func Quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	if lo == hi {
		return s[lo]
	}
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

// Latencies collects durations and reports quantiles in milliseconds.
type Latencies struct{ ms []float64 }

// Add records one duration.
func (l *Latencies) Add(d time.Duration) { l.ms = append(l.ms, float64(d)/float64(time.Millisecond)) }

// Merge appends other's samples.
func (l *Latencies) Merge(o *Latencies) { l.ms = append(l.ms, o.ms...) }

// N is the number of samples.
func (l *Latencies) N() int { return len(l.ms) }

// Q returns the q-quantile in milliseconds.
func (l *Latencies) Q(q float64) float64 { return Quantile(l.ms, q) }

// Ratio returns a/b formatted as "1.23x", or "n/a" when b is 0 or either is NaN.
func Ratio(a, b float64) string {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

// Table prints aligned columns.
type Table struct {
	header []string
	rows   [][]string
}

// NewTable starts a table with the given column names.
func NewTable(cols ...string) *Table { return &Table{header: cols} }

// Row appends one row; values are formatted with %v.
func (t *Table) Row(vals ...any) {
	r := make([]string, len(vals))
	for i, v := range vals {
		switch x := v.(type) {
		case float64:
			r[i] = FormatFloat(x)
		default:
			r[i] = fmt.Sprint(v)
		}
	}
	t.rows = append(t.rows, r)
}

// Print writes the table as aligned text, and as a Markdown table when md is true.
func (t *Table) Print(w io.Writer, md bool) {
	if md {
		fmt.Fprintln(w, "| "+strings.Join(t.header, " | ")+" |")
		seps := make([]string, len(t.header))
		for i := range seps {
			seps[i] = "---"
		}
		fmt.Fprintln(w, "| "+strings.Join(seps, " | ")+" |")
		for _, r := range t.rows {
			fmt.Fprintln(w, "| "+strings.Join(r, " | ")+" |")
		}
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.Join(t.header, "\t")+"\t")
	for _, r := range t.rows {
		fmt.Fprintln(tw, strings.Join(r, "\t")+"\t")
	}
	_ = tw.Flush()
}

// FormatFloat prints a number with a precision that suits its size.
func FormatFloat(x float64) string {
	switch {
	case math.IsNaN(x):
		return "-"
	case math.Abs(x) >= 1000:
		return fmt.Sprintf("%.0f", x)
	case math.Abs(x) >= 100:
		return fmt.Sprintf("%.1f", x)
	case math.Abs(x) >= 1:
		return fmt.Sprintf("%.2f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}
