package store

import (
	"context"
	"crypto/tls"
	"errors"
	"net"

	"google.golang.org/grpc/credentials"
)

// tlsSource is gRPC transport security that builds its TLS configuration
// afresh for each connection. etcd's client otherwise keeps the one it was
// opened with, CAs included, for as long as it lives.
type tlsSource func() *tls.Config

func (s tlsSource) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return credentials.NewTLS(s()).ClientHandshake(ctx, authority, conn)
}

func (s tlsSource) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("the store's TLS source is for clients only")
}

func (s tlsSource) Info() credentials.ProtocolInfo { return credentials.NewTLS(s()).Info() }

func (s tlsSource) Clone() credentials.TransportCredentials { return s }

// OverrideServerName is deprecated in gRPC and unused by etcd's client.
func (s tlsSource) OverrideServerName(string) error { return nil }
