package store

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// noteWrite raises Store.wrote to rev.
func (s *Store) noteWrite(rev int64) {
	for {
		cur := s.wrote.Load()
		if rev <= cur || s.wrote.CompareAndSwap(cur, rev) {
			return
		}
	}
}

// writeTracker is the client's key-value API with every write's revision
// noted (Store.wrote). A transaction whose comparison failed is noted too:
// its revision is the store's at the time, which is only more cautious.
type writeTracker struct {
	clientv3.KV
	note func(rev int64)
}

func (w writeTracker) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	resp, err := w.KV.Put(ctx, key, val, opts...)
	if err == nil {
		w.note(resp.Header.Revision)
	}
	return resp, err
}

func (w writeTracker) Delete(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.DeleteResponse, error) {
	resp, err := w.KV.Delete(ctx, key, opts...)
	if err == nil {
		w.note(resp.Header.Revision)
	}
	return resp, err
}

func (w writeTracker) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	resp, err := w.KV.Do(ctx, op)
	if err == nil && !op.IsGet() {
		switch {
		case resp.Put() != nil:
			w.note(resp.Put().Header.Revision)
		case resp.Del() != nil:
			w.note(resp.Del().Header.Revision)
		case resp.Txn() != nil:
			w.note(resp.Txn().Header.Revision)
		}
	}
	return resp, err
}

func (w writeTracker) Txn(ctx context.Context) clientv3.Txn {
	return trackedTxn{Txn: w.KV.Txn(ctx), note: w.note}
}

type trackedTxn struct {
	clientv3.Txn
	note func(rev int64)
}

func (t trackedTxn) If(cs ...clientv3.Cmp) clientv3.Txn {
	t.Txn = t.Txn.If(cs...)
	return t
}

func (t trackedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t trackedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t trackedTxn) Commit() (*clientv3.TxnResponse, error) {
	resp, err := t.Txn.Commit()
	if err == nil {
		t.note(resp.Header.Revision)
	}
	return resp, err
}
