package backup

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"time"
)

// Retention defaults.
const (
	DefaultWindow     = 7 * 24 * time.Hour
	DefaultMinBackups = 2
	// incompleteGrace is how old a backup's data without a manifest must be
	// before ApplyRetention removes it. A backup's data becomes visible
	// only when its upload completes, and its manifest follows at once, so
	// this only needs to outlast clock differences between hosts.
	incompleteGrace = 24 * time.Hour
)

// Policy says which backups to keep.
type Policy struct {
	// Window is how far back any point in time must stay restorable;
	// zero means DefaultWindow.
	Window time.Duration
	// MinBackups is how many backups are kept at least, however old;
	// zero means DefaultMinBackups.
	MinBackups int
}

func (p Policy) withDefaults() Policy {
	if p.Window <= 0 {
		p.Window = DefaultWindow
	}
	if p.MinBackups <= 0 {
		p.MinBackups = DefaultMinBackups
	}
	return p
}

// RetentionPlan is what a policy keeps and deletes.
type RetentionPlan struct {
	Keep          []string // backup IDs kept, oldest first
	DeleteBackups []string // backup IDs to delete, oldest first
	DeleteWAL     []string // WAL file names to delete
	// KeepWALFrom is the oldest segment kept (the earliest start segment
	// of a kept backup), "" when no backup is kept and so no WAL deleted.
	KeepWALFrom string
	// DeleteStreamed are the streamed increments dropped (partial.go):
	// those of segments archived since, and those before KeepWALFrom.
	DeleteStreamed []WALIncrement
}

// PlanRetention decides, for backups and the archived WAL file names wal, at
// time now, what a policy keeps and deletes.
//
// Kept: every backup that ended within the window, the newest one that
// ended before the window started (without it the start of the window could
// not be restored), and the newest p.MinBackups backups. Deleted: the other
// backups, and every WAL file (segments, partial segments, backup history
// files) from before the earliest start segment of a kept backup, on any
// timeline. Timeline history files are always kept: they are tiny, and
// recovery needs them to follow timelines. With no backup at all nothing is
// deleted.
func PlanRetention(backups []Manifest, wal []string, now time.Time, p Policy) RetentionPlan {
	p = p.withDefaults()
	bs := append([]Manifest(nil), backups...)
	// Newest last, by when they ended (which is what restoring to a time
	// depends on).
	sort.SliceStable(bs, func(i, j int) bool {
		if !bs[i].StopTime.Equal(bs[j].StopTime) {
			return bs[i].StopTime.Before(bs[j].StopTime)
		}
		return bs[i].ID < bs[j].ID
	})
	windowStart := now.Add(-p.Window)
	keep := make([]bool, len(bs))
	anchor := -1
	for i, b := range bs {
		if b.StopTime.Before(windowStart) {
			anchor = i
		} else {
			keep[i] = true
		}
	}
	if anchor >= 0 {
		keep[anchor] = true
	}
	for i := max(0, len(bs)-p.MinBackups); i < len(bs); i++ {
		keep[i] = true
	}

	var plan RetentionPlan
	var from walFile
	haveFrom := false
	for i, b := range bs {
		if !keep[i] {
			plan.DeleteBackups = append(plan.DeleteBackups, b.ID)
			continue
		}
		plan.Keep = append(plan.Keep, b.ID)
		f, err := parseWALName(b.StartWAL)
		if err != nil || f.kind != walSegment {
			// A manifest without a usable start: keep all WAL rather
			// than guess.
			return RetentionPlan{Keep: idsOf(bs)}
		}
		if !haveFrom || f.segPos() < from.segPos() {
			from, haveFrom = f, true
		}
	}
	if !haveFrom {
		return plan
	}
	plan.KeepWALFrom = from.name
	for _, name := range wal {
		f, err := parseWALName(name)
		if err != nil || f.kind == walHistory {
			continue
		}
		if f.segPos() < from.segPos() {
			plan.DeleteWAL = append(plan.DeleteWAL, name)
		}
	}
	return plan
}

func idsOf(bs []Manifest) []string {
	var ids []string
	for _, b := range bs {
		ids = append(ids, b.ID)
	}
	return ids
}

// ApplyRetention applies a policy at time now: it deletes the backups the
// policy drops, then the WAL no kept backup needs (in that order, so that an
// interrupted run never leaves a listed backup without its WAL), and the
// data of backups that never got a manifest (failed uploads) once a day old.
func (a *Archive) ApplyRetention(ctx context.Context, p Policy, now time.Time) (RetentionPlan, error) {
	backups, err := a.ListBackups(ctx)
	if err != nil {
		return RetentionPlan{}, err
	}
	wal, err := a.ListWAL(ctx)
	if err != nil {
		return RetentionPlan{}, err
	}
	plan := PlanRetention(backups, wal, now, p)
	for _, id := range plan.DeleteBackups {
		if err := a.DeleteBackup(ctx, id); err != nil {
			return plan, err
		}
	}
	for _, name := range plan.DeleteWAL {
		f, _ := parseWALName(name)
		if err := a.store.Delete(ctx, a.walKey(f)); err != nil {
			return plan, fmt.Errorf("retention of %s: %w", a.cluster, err)
		}
	}
	incs, err := a.ListWALIncrements(ctx)
	if err != nil {
		return plan, err
	}
	plan.DeleteStreamed = planStreamRetention(incs, wal, plan.KeepWALFrom)
	if err := a.DeleteWALIncrements(ctx, plan.DeleteStreamed); err != nil {
		return plan, fmt.Errorf("retention of %s: %w", a.cluster, err)
	}
	return plan, a.deleteIncomplete(ctx, now)
}

// deleteIncomplete removes backup data that has had no manifest for a day.
func (a *Archive) deleteIncomplete(ctx context.Context, now time.Time) error {
	objs, err := a.store.List(ctx, a.backupPrefix())
	if err != nil {
		return err
	}
	complete := map[string]bool{}
	for _, o := range objs {
		if id, ok := a.manifestID(o.Key); ok {
			complete[id] = true
		}
	}
	for _, o := range objs {
		if _, ok := a.manifestID(o.Key); ok {
			continue
		}
		id := strings.TrimPrefix(path.Dir(o.Key), a.backupPrefix())
		if complete[id] || now.Sub(o.ModTime) <= incompleteGrace {
			continue
		}
		if err := a.store.Delete(ctx, o.Key); err != nil {
			return fmt.Errorf("retention of %s: %w", a.cluster, err)
		}
	}
	return nil
}
