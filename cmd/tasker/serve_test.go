package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestServeRejectsUnknownRole(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, "serve", "--roles", "orchestrator,cook",
		"--database-url", "sqlite://"+filepath.Join(t.TempDir(), "tasker.db"))
	if code == 0 || !strings.Contains(errOut, "--roles: worker.roles") || !strings.Contains(errOut, `"cook"`) {
		t.Fatalf("serve --roles orchestrator,cook exited %d:\n%s\nwant an error naming --roles, worker.roles and the role", code, errOut)
	}
}

func TestServeRejectsUnknownDeploymentMode(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, "serve", "--deployment-mode", "carrier_pigeon",
		"--database-url", "sqlite://"+filepath.Join(t.TempDir(), "tasker.db"))
	if code == 0 || !strings.Contains(errOut, "--deployment-mode: worker.deployment_mode") || !strings.Contains(errOut, "carrier_pigeon") {
		t.Fatalf("serve --deployment-mode carrier_pigeon exited %d:\n%s\nwant an error naming the flag and worker.deployment_mode", code, errOut)
	}
}

func TestServeRolesFromEnvironment(t *testing.T) {
	t.Setenv("TASKER_ROLES", "worker,cook")
	t.Setenv("TASKER_DATABASE_URL", "sqlite://"+filepath.Join(t.TempDir(), "tasker.db"))
	code, _, errOut := runCLI(t, "serve")
	if code == 0 || !strings.Contains(errOut, `TASKER_ROLES: worker.roles has unknown role "cook"`) {
		t.Fatalf("serve with TASKER_ROLES=worker,cook exited %d:\n%s", code, errOut)
	}
}

func TestServeUnreachableDatabase(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, "serve", "--database-url",
		"postgres://bob:s3cret-pw@127.0.0.1:1/app?sslmode=disable&connect_timeout=5")
	if code == 0 {
		t.Fatalf("serve on an unreachable database exited 0:\n%s", errOut)
	}
	if !strings.Contains(errOut, "127.0.0.1:1") {
		t.Errorf("the error does not name the host and port:\n%s", errOut)
	}
	if strings.Contains(errOut, "s3cret-pw") {
		t.Errorf("the output shows the password:\n%s", errOut)
	}
}

// TestServeStopsOnSignal runs serve in-process on SQLite and ends it the way
// a signal does, by cancelling its context: it drains and returns 0.
func TestServeStopsOnSignal(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	errOut := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--database-url", "sqlite://" + filepath.Join(t.TempDir(), "tasker.db")}, &out, errOut)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(errOut.String(), "tasker serve started") {
		select {
		case code := <-done:
			t.Fatalf("serve exited %d before starting:\n%s", code, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d after the signal:\n%s", code, errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not stop:\n%s", errOut.String())
	}
	if !strings.Contains(errOut.String(), "tasker serve stopped") {
		t.Errorf("serve did not log its stop:\n%s", errOut.String())
	}
}

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", "sqlite://tasker.db"},
		{"sqlite:///var/lib/tasker.db", "sqlite:///var/lib/tasker.db"},
		{"postgres://app:hunter2@db.internal:5432/tasker?sslmode=require", "postgres://app:xxxxx@db.internal:5432/tasker?sslmode=require"},
		{"postgres://app@db.internal/tasker", "postgres://app@db.internal/tasker"},
		{"postgres://app:hun%zz@db/x", "postgres://(unparseable URL)"},
	} {
		if got := redactURL(tc.in); got != tc.want {
			t.Errorf("redactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
