package testkit_test

import (
	"context"
	"errors"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/sagapipe/sagapipe/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The server accepts connections and runs SQL, a database can be made on
// it, and Stop leaves neither a process nor a directory behind.
func TestPostgresStartsAndStops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pg, err := testkit.LaunchPostgres()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			pg.Stop()
		}
	}()
	url, err := pg.CreateDatabase(ctx, "shop")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("%v\n%s", err, pg.Log())
	}
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if db != "shop" {
		t.Fatalf("connected to %q, want shop", db)
	}

	pid := pg.PID()
	stopped = true
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("postgres (pid %d) is still there after Stop: kill(0) = %v", pid, err)
	}
	if _, err := os.Stat(pg.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the server's directory %s is still there after Stop: %v", pg.Dir(), err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("a second Stop: %v", err)
	}
}
