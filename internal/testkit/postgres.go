package testkit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// InstallPostgres is the command that installs what StartPostgres runs.
const InstallPostgres = "apt-get install -y postgresql"

// ErrNoPostgres: no PostgreSQL server binaries were found.
var ErrNoPostgres = errors.New("testkit: PostgreSQL is not installed (no initdb and postgres on PATH or under /usr/lib/postgresql/*/bin); install it with `" + InstallPostgres + "`")

// Postgres is a throwaway PostgreSQL server: a fresh cluster in a
// temporary directory, listening on 127.0.0.1 on a free port, with its
// unix socket in that directory. Connect as the superuser "postgres"
// without a password.
type Postgres struct {
	// URL connects to the "postgres" database.
	URL  string
	Port int
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed once the server process has exited
}

// StartPostgres starts a server for t and stops it when t ends. It fails t
// when PostgreSQL is not installed: the tests that need it are never
// skipped.
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	pg, err := LaunchPostgres()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := pg.Stop(); err != nil {
			t.Error(err)
		}
	})
	return pg
}

// LaunchPostgres starts a server; Stop stops it. Tests use StartPostgres;
// this is for Example functions, which have no testing.TB.
func LaunchPostgres() (*Postgres, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	// Not t.TempDir: its parent is private to root, and the server may run
	// as another user (initdb and postgres refuse to run as root).
	dir, err := os.MkdirTemp("", "sagapipe-pg-")
	if err != nil {
		return nil, fmt.Errorf("testkit: postgres: %w", err)
	}
	pg, err := launch(bin, dir, cred)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return pg, nil
}

func launch(bin, dir string, cred *syscall.Credential) (*Postgres, error) {
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("testkit: postgres: hand %s to the server's user: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
	initdb.Env = serverEnv()
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("testkit: postgres: initdb: %w\n%s", err, out)
	}
	var lastErr error
	for range 3 { // a free port can be taken before the server binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		pg, err := serve(bin, dir, cred, port)
		if err == nil {
			return pg, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// serve runs the server in the foreground, as this process's child: it
// dies with this process (Pdeathsig) whatever becomes of the test.
func serve(bin, dir string, cred *syscall.Credential, port int) (*Postgres, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("postgres-%d.log", port))
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("testkit: postgres: %w", err)
	}
	defer logFile.Close() // the child holds its own descriptor
	cmd := exec.Command(filepath.Join(bin, "postgres"), "-D", filepath.Join(dir, "data"),
		"-p", strconv.Itoa(port), "-k", dir,
		"-c", "listen_addresses=127.0.0.1",
		// A test database: durability is not under test, speed is.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200")
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("testkit: postgres: start: %w", err)
	}
	pg := &Postgres{
		URL:  fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		Port: port, dir: dir, cmd: cmd, done: make(chan struct{}),
	}
	go func() { _ = cmd.Wait(); close(pg.done) }()
	if err := pg.waitReady(30 * time.Second); err != nil {
		pg.kill()
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("%w\nserver log:\n%s", err, log)
	}
	return pg, nil
}

// waitReady waits until the server accepts connections.
func (p *Postgres) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, p.URL)
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("testkit: postgres exited before it accepted connections on port %d", p.Port)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testkit: postgres did not accept connections on port %d within %s: %w", p.Port, timeout, err)
		}
	}
}

// Stop stops the server at once, as `pg_ctl stop -m immediate` does
// (SIGQUIT to the postmaster: no checkpoint, nothing to keep), waits for it
// and removes its directory. It is safe to call more than once.
func (p *Postgres) Stop() error {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.kill()
		}
	}
	if err := os.RemoveAll(p.dir); err != nil {
		return fmt.Errorf("testkit: postgres: remove %s: %w", p.dir, err)
	}
	return nil
}

func (p *Postgres) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// PID is the server's (the postmaster's) process ID.
func (p *Postgres) PID() int { return p.cmd.Process.Pid }

// Dir is the directory holding the server's data, socket and log.
func (p *Postgres) Dir() string { return p.dir }

// Log returns what the server logged so far, for a failing test's message.
func (p *Postgres) Log() string {
	matches, _ := filepath.Glob(filepath.Join(p.dir, "postgres-*.log"))
	var b strings.Builder
	for _, m := range matches {
		out, _ := os.ReadFile(m)
		b.Write(out)
	}
	return b.String()
}

// CreateDatabase creates a database and returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		return "", fmt.Errorf("testkit: postgres: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("testkit: postgres: create database %s: %w", name, err)
	}
	return strings.Replace(p.URL, "/postgres?", "/"+name+"?", 1), nil
}

// postgresBin finds the directory holding initdb and postgres: the one of
// initdb on PATH (Debian links it there only sometimes), else the newest
// /usr/lib/postgresql/<version>/bin.
func postgresBin() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(versions, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, d := range append(dirs, versions...) {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func versionOf(bin string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(bin)))
	return v
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// serverCredential is who the server runs as: this process's user, unless
// that is root, which initdb and postgres refuse; then the "postgres" user
// the Debian package creates, else "nobody".
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("testkit: postgres: running as root, and neither a \"postgres\" nor a \"nobody\" user exists to run the server as (initdb refuses root); create one with `useradd postgres`")
}

func serverEnv() []string {
	return []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "LANG=C", "TZ=UTC"}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("testkit: postgres: find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
