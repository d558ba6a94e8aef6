package main

import (
	"context"
	"errors"
)

func runConns(ctx context.Context, env *runEnv, args []string) error      { return errors.New("todo") }
func runCreds(ctx context.Context, env *runEnv, args []string) error      { return errors.New("todo") }
func runDirectory(ctx context.Context, env *runEnv, args []string) error  { return errors.New("todo") }
func runCircuit(ctx context.Context, env *runEnv, args []string) error    { return errors.New("todo") }
func runRendezvous(ctx context.Context, env *runEnv, args []string) error { return errors.New("todo") }
