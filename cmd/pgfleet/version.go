package main

import "github.com/pgfleet/pgfleet/internal/agent"

func versionString() string { return agent.Version }
