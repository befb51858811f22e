package console

import (
	"strings"
)

// The long actions this console runs in the background (a rolling
// restart, an import, a move) keep what they said in memory, under
// restartsMu, and show it on the cluster's page as it comes.

// jobCopy is a copy, made with cp under restartsMu, of the job of
// cluster name in jobs, or nil.
func jobCopy[T any](c *Console, jobs map[string]*T, name string, cp func(T) T) *T {
	c.restartsMu.Lock()
	defer c.restartsMu.Unlock()
	run := jobs[name]
	if run == nil {
		return nil
	}
	v := cp(*run)
	return &v
}

// lineWriter adds each line written to *lines, through edit when set,
// under restartsMu, and wakes cluster name's pages.
type lineWriter struct {
	c     *Console
	name  string
	lines *[]string
	edit  func(string) string // called under restartsMu
}

func (l lineWriter) Write(b []byte) (int, error) {
	l.c.restartsMu.Lock()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if l.edit != nil {
			line = l.edit(line)
		}
		*l.lines = append(*l.lines, line)
	}
	l.c.restartsMu.Unlock()
	l.c.changed(l.name)
	l.c.progressed(l.name)
	return len(b), nil
}

// progressed wakes cluster name's open pages for a job's new line: the
// job's progress is not in the store, whose changes wake them otherwise.
func (c *Console) progressed(name string) {
	c.hub.wake(topicCluster + "/" + name)
}
