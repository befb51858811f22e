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
