package api

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/pgfleet/pgfleet/internal/backup"
	"github.com/pgfleet/pgfleet/internal/fleet"
	"github.com/pgfleet/pgfleet/internal/store"
)

// planBackups fills in a new cluster's backup policy and, for a restore,
// where its data comes from. Every check that can fail runs here, before
// anything is written: a store that cannot be reached, a name whose
// backups the store holds already, a target no backup can reach. It
// answers 0 when the plan is sound, else the status and message to answer.
func (s *Server) planBackups(ctx context.Context, spec *fleet.ClusterSpec, secrets *fleet.Secrets, req CreateRequest) (int, string) {
	if req.BackupEvery < 0 {
		return http.StatusBadRequest, fmt.Sprintf("backup interval %ds: it must not be negative", req.BackupEvery)
	}
	if req.BackupEvery > 0 && req.BackupEvery < 60 {
		return http.StatusBadRequest, fmt.Sprintf("backup interval %ds: it must be at least a minute", req.BackupEvery)
	}
	storeURL := req.BackupStore
	if storeURL == "" {
		def, err := s.store.DefaultBackupStore(ctx)
		if err != nil {
			return http.StatusServiceUnavailable, err.Error()
		}
		storeURL = def
	}
	if storeURL == "none" {
		storeURL = ""
	}
	if storeURL == "" && (req.BackupEncrypt || req.BackupEvery != 0) {
		return http.StatusBadRequest, "backup settings given but no backup store: pass --backup-store URL, or start the agents with --backup-store"
	}
	if storeURL != "" {
		spec.Backup = &fleet.BackupSpec{Store: storeURL, Encrypted: req.BackupEncrypt, EverySeconds: req.BackupEvery}
		if req.BackupEncrypt {
			k := make([]byte, 32)
			rand.Read(k)
			secrets.BackupKey = hex.EncodeToString(k)
		}
		// A store that holds another cluster's archive under this name
		// would refuse this one's WAL (it never overwrites), or worse, mix
		// two histories.
		a, err := backup.OpenArchiveKey(ctx, storeURL, spec.Name, "")
		if err != nil {
			return http.StatusBadRequest, err.Error()
		}
		objs, err := a.Store().List(ctx, spec.Name+"/")
		if err != nil {
			return http.StatusBadGateway, fmt.Sprintf("backup store %s: %v", a.Store(), err)
		}
		if len(objs) > 0 {
			return http.StatusConflict, fmt.Sprintf("the backup store %s already holds backups of a cluster named %s: pick another name, restore them with `pgfleet restore %s --into NEW`, or use another --backup-store", a.Store(), spec.Name, spec.Name)
		}
	}
	if req.Restore == nil {
		return 0, ""
	}
	return s.planRestore(ctx, spec, secrets, *req.Restore)
}

// planRestore picks the backup a restore starts from and copies the
// source's credentials, which its data holds.
func (s *Server) planRestore(ctx context.Context, spec *fleet.ClusterSpec, secrets *fleet.Secrets, rr RestoreRequest) (int, string) {
	if err := fleet.ValidateName("cluster", rr.From, fleet.MaxClusterName); err != nil {
		return http.StatusBadRequest, "restore: " + err.Error()
	}
	target, err := backup.NewTarget(rr.Time, rr.LSN, rr.Latest)
	if err != nil {
		return http.StatusBadRequest, "restore: " + err.Error()
	}
	src, sec, err := s.sourceOf(ctx, rr.From)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return http.StatusNotFound, err.Error()
		}
		return http.StatusServiceUnavailable, err.Error()
	}
	if src.Backup == nil {
		return http.StatusUnprocessableEntity, fmt.Sprintf("cluster %s has no backups: it was created without a backup store", rr.From)
	}
	key := ""
	if src.Backup.Encrypted {
		key = sec.BackupKey
	}
	a, err := backup.OpenArchiveKey(ctx, src.Backup.Store, rr.From, key)
	if err != nil {
		return http.StatusBadRequest, err.Error()
	}
	list, err := a.ListBackups(ctx)
	if err != nil {
		return http.StatusBadGateway, fmt.Sprintf("list backups of %s: %v", rr.From, err)
	}
	m, err := backup.PickBackup(list, target, time.Now())
	if err != nil {
		return http.StatusUnprocessableEntity, fmt.Sprintf("restore %s: %v", rr.From, err)
	}
	spec.Restore = &fleet.RestoreSpec{
		From: rr.From, Store: src.Backup.Store, Encrypted: src.Backup.Encrypted, BackupID: m.ID,
		Time: rr.Time, LSN: rr.LSN, Latest: rr.Latest,
	}
	// The restored data holds the source's roles and passwords; its backups
	// are encrypted with the same key, if the new cluster encrypts.
	*secrets = fleet.Secrets{SuperuserPassword: sec.SuperuserPassword, ReplicationPassword: sec.ReplicationPassword, BackupKey: sec.BackupKey}
	if spec.Backup != nil && spec.Backup.Encrypted && secrets.BackupKey == "" {
		k := make([]byte, 32)
		rand.Read(k)
		secrets.BackupKey = hex.EncodeToString(k)
	}
	return 0, ""
}

// sourceOf finds a cluster's spec and secrets, live or destroyed.
func (s *Server) sourceOf(ctx context.Context, name string) (fleet.ClusterSpec, fleet.Secrets, error) {
	c, err := s.store.Cluster(ctx, name)
	if err == nil {
		sec, err := s.store.Secrets(ctx, name)
		return c.Spec, sec, err
	}
	if !errors.Is(err, store.ErrNotFound) {
		return fleet.ClusterSpec{}, fleet.Secrets{}, err
	}
	r, err := s.store.Retired(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return fleet.ClusterSpec{}, fleet.Secrets{}, fmt.Errorf("cluster %s %w: no live cluster and no backups of a destroyed one by that name", name, store.ErrNotFound)
	}
	return r.Spec, r.Secrets, err
}

// clusterArchive opens the archive of a live or destroyed cluster.
func (s *Server) clusterArchive(w http.ResponseWriter, r *http.Request) (*backup.Archive, string, bool) {
	name, ok := clusterName(w, r)
	if !ok {
		return nil, "", false
	}
	spec, sec, err := s.sourceOf(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return nil, "", false
	}
	if spec.Backup == nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("cluster %s has no backups: it was created without a backup store (create --backup-store URL)", name))
		return nil, "", false
	}
	key := ""
	if spec.Backup.Encrypted {
		key = sec.BackupKey
	}
	a, err := backup.OpenArchiveKey(r.Context(), spec.Backup.Store, name, key)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return nil, "", false
	}
	return a, name, true
}

// createBackup asks a member for a base backup now: a streaming standby
// when there is one.
func (s *Server) createBackup(w http.ResponseWriter, r *http.Request) {
	name, ok := clusterName(w, r)
	if !ok {
		return
	}
	c, err := s.store.Cluster(r.Context(), name)
	if err != nil {
		s.storeError(w, err)
		return
	}
	if c.Spec.Backup == nil {
		writeError(w, http.StatusUnprocessableEntity, fmt.Sprintf("cluster %s has no backups: it was created without a backup store (create --backup-store URL)", name))
		return
	}
	if c.Leader == "" {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("cluster %s has no primary right now; retry once one runs", name))
		return
	}
	if c.Backup != nil {
		// One at a time: the one under way is the backup asked for.
		writeJSON(w, http.StatusAccepted, BackupRequestView{ID: c.Backup.ID, Member: c.Backup.Member, Running: true})
		return
	}
	req := fleet.BackupRequest{ID: backup.NewBackupID(time.Now()), Member: c.BackupMember(), Requested: time.Now().UTC()}
	if err := s.store.RequestBackup(r.Context(), name, req); err != nil {
		s.storeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, BackupRequestView{ID: req.ID, Member: req.Member})
}

func (s *Server) listBackups(w http.ResponseWriter, r *http.Request) {
	a, name, ok := s.clusterArchive(w, r)
	if !ok {
		return
	}
	list, err := a.ListBackups(r.Context())
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("list backups of %s: %v", name, err))
		return
	}
	v := BackupsView{Store: a.Store().String(), Backups: list}
	if c, err := s.store.Cluster(r.Context(), name); err == nil {
		v.Running = c.Backup
	}
	if v.Backups == nil {
		v.Backups = []backup.Manifest{}
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) verifyBackups(w http.ResponseWriter, r *http.Request) {
	a, name, ok := s.clusterArchive(w, r)
	if !ok {
		return
	}
	id := r.URL.Query().Get("id")
	// Reading back a whole archive may take longer than the server's
	// write timeout allows an answer.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	rep, err := a.Verify(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Sprintf("verify backups of %s: %v", name, err))
		return
	}
	writeJSON(w, http.StatusOK, rep)
}
