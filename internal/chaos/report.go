package chaos

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Table renders the report as a Markdown table, one row per fault kind,
// then the totals and the findings.
func (r Report) Table() string {
	var b strings.Builder
	b.WriteString("| fault | injected | settled | settle after heal: median (max) | no app write acknowledged: median (max) | acked writes lost |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	var kinds []string
	for k := range r.ByKind {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		s := r.ByKind[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %s | %s | %d |\n", k, s.Faults, s.Settled, spread(s.Settle), spread(s.Unavailable), s.Lost)
	}
	fmt.Fprintf(&b, "\nWrites: %d acknowledged, %d refused, %d unknown; %d acknowledged ids missing at the end.\n", r.Acked, r.Failed, r.Unknown, len(r.Lost))
	if len(r.Findings) == 0 {
		b.WriteString("Findings: none (no split brain, no write on an older timeline after a newer one, every fault settled, members converged).\n")
	} else {
		b.WriteString("Findings:\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "- %s: %s\n", f.Kind, f.Detail)
		}
	}
	return b.String()
}

func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return fmt.Sprintf("%.1f s (%.1f s)", s[len(s)/2].Seconds(), s[len(s)-1].Seconds())
}
