package service_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sagapipe/sagapipe/devstack"
	"github.com/sagapipe/sagapipe/observability"
	"github.com/sagapipe/sagapipe/service"
)

// selfSignedCA makes a CA and a server certificate for 127.0.0.1, returning
// the server's TLS config and the CA's PEM file.
func selfSignedCA(t *testing.T) (*tls.Config, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sagapipe test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srv := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kafka"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}}, MinVersion: tls.VersionTLS12}, caFile
}

// The service reaches a broker that requires TLS and SASL (PLAIN, SCRAM-SHA-256,
// SCRAM-SHA-512) and runs a saga through it; a wrong password fails with an
// error that names the problem, not the password.
func TestServiceOverTLSAndSASL(t *testing.T) {
	for _, mech := range []string{service.SASLPlain, service.SASLScramSHA256, service.SASLScramSHA512} {
		t.Run(mech, func(t *testing.T) {
			serverTLS, caFile := selfSignedCA(t)
			const user, pass = "orchestrator", "correct-horse-battery"
			stack, err := devstack.Start(devstack.Config{KafkaOptions: []kfake.Opt{
				kfake.EnableSASL(), kfake.Superuser(mech, user, pass), kfake.TLS(serverTLS)}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { stack.Close() }) // after the participants stop
			cfg := service.Config{Brokers: stack.KafkaAddrs(), Registry: service.RegistryConfig{URL: stack.RegistryURL()},
				HTTPAddr: "127.0.0.1:0", ShutdownGrace: 10 * time.Second,
				TLS:  service.TLSConfig{Enabled: true, CAFile: caFile},
				SASL: service.SASLConfig{Mechanism: mech, Username: user, Password: pass}}
			clientOpts, err := cfg.ClientOptions()
			if err != nil {
				t.Fatal(err)
			}
			// Without TLS and SASL the broker is out of reach.
			plainClient, _ := kgo.NewClient(kgo.SeedBrokers(stack.KafkaAddrs()...), kgo.RequestRetries(0))
			pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			if err := plainClient.Ping(pctx); err == nil {
				t.Fatal("a client without TLS reached the broker")
			}
			cancel()
			plainClient.Close()

			s := ordersWorld(t, stack, clientOpts[1:]...)
			svc := startService(t, cfg, s)
			code, body := do(t, "POST", svc.http.URL+"/api/sagas/orders?id=o-tls", "", validOrder)
			if code != 202 {
				t.Fatalf("start: %d %v", code, body)
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				code, st := do(t, "GET", svc.http.URL+"/api/sagas/orders/o-tls", "", "")
				if code == 200 && st["state"] == "Completed" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("saga did not complete over %s: %d %v", mech, code, st)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if _, err := svc.stop(); err != nil {
				t.Fatal(err)
			}

			// A wrong password stops the service with an authentication
			// error that does not repeat the password.
			const wrong = "wrong-password-42"
			bad := cfg
			bad.SASL.Password = wrong
			tel, _ := observability.Setup(context.Background())
			logs := &syncBuffer{}
			badSvc, err := service.New(bad, tel, observability.NewJSONLogger(logs, slog.LevelInfo), service.Register(s))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancelRun := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancelRun()
			runErr := badSvc.Run(ctx)
			if runErr == nil || ctx.Err() != nil {
				t.Fatalf("Run with a wrong password: %v (ctx %v)", runErr, ctx.Err())
			}
			if !strings.Contains(strings.ToLower(runErr.Error()), "sasl") && !strings.Contains(strings.ToLower(runErr.Error()), "authentic") {
				t.Errorf("the error does not name the authentication: %v", runErr)
			}
			if strings.Contains(runErr.Error(), wrong) || strings.Contains(logs.String(), wrong) {
				t.Errorf("the password leaked:\n%v\n%s", runErr, logs.String())
			}
		})
	}
}
