package agent

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
)

// Archived marks. Archiving ahead (walahead.go) uploads a member's ready
// WAL files before postgres asks, but each archive_command was still a
// `pgfleet wal-push` process, whose start (a binary that embeds etcd, gRPC
// and the S3 client: 25 to 50 ms of loading and package initialisation) was
// most of what a segment cost once its upload was done. So once a file
// pushed ahead is durable, the agent also leaves a mark for it, an empty
// file named after it in run/archived/<member>, and the member's
// archive_command first tests for the mark with the shell's builtin `test`
// and runs wal-push only without one (backup.AgentArchiveCommand), as
// pgBackRest's asynchronous archive-push answers from its spool's status
// files.
//
// A mark is as exact as the answer wal-push gives: it is made only after
// the file, as read then, is durable in the store, and a WAL file postgres
// has marked ready is never written again (it is complete, and is recycled
// only once archived). What could make a mark lie is a file of the same name
// with other content, which needs the member's data replaced (a clone, a
// rewind, a restore) and a new term as primary; so the marks of a member
// live for one term as primary: the supervisor clears them when a term
// starts and when it ends, the WAL server clears all of them when it starts,
// and a push ahead that finishes after its term ended leaves none.
//
// The directories are the agent's (0710, the postgres OS user's group, as
// run/ is): postgres may test for a mark, never make one.
type archivedMarks struct {
	dir      string // run/archived
	uid, gid int    // owner and group of the directories

	mu   sync.Mutex
	term map[string]uint64 // by member: bumped by every clear
}

// archivedMarksDir is where the agent serving socket marks member's files.
func archivedMarksDir(socket, member string) string {
	return filepath.Join(filepath.Dir(socket), "archived", member)
}

func newArchivedMarks(dir string, uid, gid int) *archivedMarks {
	return &archivedMarks{dir: dir, uid: uid, gid: gid, term: map[string]uint64{}}
}

// memberDir is where member's marks are.
func (m *archivedMarks) memberDir(member string) string {
	return filepath.Join(m.dir, member)
}

// reset removes every mark, when the WAL server starts.
func (m *archivedMarks) reset() error {
	if err := os.RemoveAll(m.dir); err != nil {
		return err
	}
	return m.mkdir(m.dir)
}

func (m *archivedMarks) mkdir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.Chown(dir, m.uid, m.gid); err != nil {
		return err
	}
	return os.Chmod(dir, 0o710)
}

// clear removes member's marks and ends the term they were made in: a
// push ahead that started before leaves none.
func (m *archivedMarks) clear(member string) error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.term[member]++
	return os.RemoveAll(m.memberDir(member))
}

// current returns member's term, for a push ahead to hand to mark.
func (m *archivedMarks) current(member string) uint64 {
	if m == nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.term[member]
}

// mark records that member's WAL file name is durable in its archive, if
// the term the push started in has not ended.
func (m *archivedMarks) mark(member string, term uint64, name string) error {
	if m == nil || name != filepath.Base(name) || name == "." || name == ".." {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.term[member] != term {
		return nil
	}
	dir := m.memberDir(member)
	if err := m.mkdir(dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// prune removes member's marks of files that are no longer ready to
// archive: postgres archived them, and they are recycled next.
func (m *archivedMarks) prune(member string, ready map[string]bool) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	dir := m.memberDir(member)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !ready[e.Name()] {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// forgetArchived clears the member's marks (see archivedMarks): its term
// as primary starts or ends, or its data is replaced.
func (s *supervisor) forgetArchived() {
	if err := s.marks.clear(s.spec.ID); err != nil {
		s.log.Warn("clear the marks of WAL archived ahead", "err", err)
	}
}
