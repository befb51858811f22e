package store

import (
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestTranslateTransient(t *testing.T) {
	for _, err := range []error{
		status.Error(codes.Unavailable, "connection refused"),
		status.Error(codes.DeadlineExceeded, "context deadline exceeded"),
		status.Error(codes.Unknown, "raft proposal dropped"),
	} {
		if got := Translate(err); !errors.Is(got, ErrNoQuorum) {
			t.Errorf("Translate(%v) = %v, want ErrNoQuorum", err, got)
		}
	}
	if got := Translate(status.Error(codes.Unknown, "something else")); errors.Is(got, ErrNoQuorum) {
		t.Errorf("an unknown error became ErrNoQuorum: %v", got)
	}
}

func TestOnlyInvalid(t *testing.T) {
	bad := &InvalidRecordError{Key: "/pgfleet/clusters/x/spec", Cluster: "x", Err: errors.New("parameter fsync is reserved")}
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{bad, true},
		{errors.Join(bad, bad), true},
		{errors.Join(bad, ErrNoQuorum), false},
		{ErrNoQuorum, false},
	} {
		if got := OnlyInvalid(tt.err); got != tt.want {
			t.Errorf("OnlyInvalid(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
