// Package backup keeps clusters' backups in an object store: archived WAL
// and base backups, compressed, checksummed and optionally encrypted, and
// the decisions around them (retention, WAL chain verification, which
// backup a point-in-time restore starts from) as pure functions.
//
// The parts:
//
//   - Store is an object store named by URL (OpenStore): a directory
//     (file:///path) or an S3-compatible bucket (s3://bucket/prefix?endpoint=...).
//   - Archive is one cluster's backups in a Store. PushWAL and FetchWAL are
//     what archive_command and restore_command reach (`pgfleet wal-push`,
//     `pgfleet wal-fetch`, through the agent's WAL socket); PutBackup streams a pg_basebackup tar into the
//     store, GetBackup restores one into a directory; ListBackups,
//     DeleteBackup, ApplyRetention and Verify manage them.
//   - PlanRetention, CheckWAL and PickBackup decide; RecoverySettings,
//     AgentArchiveCommand and AgentRestoreCommand render what postgres is
//     given (ArchiveCommand and RestoreCommand, the direct mode, are for
//     running wal-push and wal-fetch by hand).
//
// Every object but a backup's manifest is in one format, described in
// object.go: a zstd stream of the content followed by a trailer holding its
// length and SHA-256 (a zstd skippable frame, so an unencrypted object is a
// plain .zst file), and with a Key, that whole stream encrypted with
// AES-256-GCM in 1 MiB chunks that authenticate their order and the end of
// the stream. Every read checks the trailer, so a damaged object is an
// error wrapping ErrCorrupt, never wrong data.
//
// What can write to the store is not trusted. The trailer is a checksum,
// not a signature, so with a Key every read refuses an object that is not
// encrypted (ErrNotEncrypted): only the key proves that pgfleet wrote it,
// and a WAL file or base backup planted in an encrypted archive is never
// replayed. And whatever a backup's tar holds, a restore writes only inside
// its data directory (see extractTar).
package backup
