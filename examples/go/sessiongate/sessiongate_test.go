// The net/http middleware against the real binary (SESSIONGATE_BIN) and a fake legacy
// provider's UserInfo on loopback: a valid session passes (and its JWT cookie is refreshed),
// a bad one is 401, a legacy token is migrated in passing with the new session's cookies set,
// a login route relays the flow cookie, and sessiongate down is 503 — never 401.
package sessiongate

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	sessiongatev1 "sessiongate.dev/gen/go/sessiongate/v1"
)

const key = "go-example-key"

// server is a running sessiongate binary on free loopback ports.
type server struct {
	cmd        *exec.Cmd
	grpc, http string
}

func startSessiongate(t *testing.T, toml string) *server {
	t.Helper()
	bin := os.Getenv("SESSIONGATE_BIN")
	if bin == "" {
		t.Fatal("SESSIONGATE_BIN names the sessiongate binary to test")
	}
	dir := t.TempDir()
	config := filepath.Join(dir, "sessiongate.toml")
	if err := os.WriteFile(config, []byte(toml), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"SESSIONGATE_CONFIG="+config,
		"SESSIONGATE_GRPC_ADDR=127.0.0.1:0",
		"SESSIONGATE_HTTP_ADDR=127.0.0.1:0",
		"SESSIONGATE_LOG_FORMAT=json",
		"REDIS_URL=",
		"RUST_LOG=info",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd}
	t.Cleanup(s.stop)
	// The "sessiongate serving" line says where it listens: no sleeping, no polling.
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		var line struct {
			Message  string `json:"message"`
			GRPCAddr string `json:"grpc_addr"`
			HTTPAddr string `json:"http_addr"`
		}
		if json.Unmarshal(lines.Bytes(), &line) == nil && line.Message == "sessiongate serving" {
			s.grpc, s.http = line.GRPCAddr, line.HTTPAddr
			go func() {
				for lines.Scan() {
				}
			}()
			return s
		}
	}
	t.Fatalf("sessiongate exited before serving")
	return nil
}

func (s *server) stop() {
	if s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		_ = s.cmd.Wait()
	}
}

func hexSHA(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func random(prefix string) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

// legacyProvider answers UserInfo for the opaque tokens it issued.
func legacyProvider(t *testing.T, tokens map[string]string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sub, ok := tokens[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
		if r.URL.Path != "/userinfo" || !ok {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]interface{}{
			"sub": sub, "email": sub + "@example.com", "email_verified": true,
		})
	}))
	t.Cleanup(srv.Close)
	return srv
}

type fixture struct {
	sg     *server
	api    sessiongatev1.SessionGateServiceClient
	app    *httptest.Server
	legacy string // a legacy opaque token of user alice
}

func setUp(t *testing.T) *fixture {
	legacy := random("legacy")
	idp := legacyProvider(t, map[string]string{legacy: "alice"})
	sg := startSessiongate(t, fmt.Sprintf(`
[[clients]]
name = "orders-service"
key_sha256 = "%s"
scopes = ["validate", "migrate", "flow", "issue"]

[[providers]]
name = "legacy-idp"
kind = "legacy"
issuer = "%s/"
token_format = "opaque"
userinfo_url = "%s/userinfo"
policy = "upgrade"

[[flows]]
name = "login"
percentage = 100
stickiness = "device"
`, hexSHA(key), idp.URL, idp.URL))
	serviceConfig, err := os.ReadFile("../../../clients/service-config.json")
	if err != nil {
		t.Fatal(err)
	}
	gate, err := New(Options{
		Target:        "dns:///" + sg.grpc,
		APIKey:        key,
		ServiceConfig: string(serviceConfig),
		DialOptions:   []grpc.DialOption{grpc.WithInsecure()},
		Deadline:      5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gate.Close() })
	conn, err := grpc.Dial(sg.grpc, grpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	mux := http.NewServeMux()
	mux.Handle("/orders", gate.Protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _ := IdentityFrom(r.Context())
		_ = json.NewEncoder(w).Encode(id)
	})))
	mux.Handle("/login", gate.LoginFlow("login", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, FlowFrom(r.Context()))
	})))
	app := httptest.NewServer(mux)
	t.Cleanup(app.Close)
	return &fixture{sg: sg, api: sessiongatev1.NewSessionGateServiceClient(conn), app: app, legacy: legacy}
}

func (f *fixture) create(t *testing.T) *sessiongatev1.CreateSessionResponse {
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+key)
	s, err := f.api.CreateSession(ctx, &sessiongatev1.CreateSessionRequest{
		Who:       &sessiongatev1.CreateSessionRequest_NewUser{NewUser: &sessiongatev1.NewUser{}},
		RequestId: "0f8fad5b-d9cb-469f-a165-" + random("")[:12],
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixture) get(t *testing.T, path string, header http.Header) *http.Response {
	req, _ := http.NewRequest(http.MethodGet, f.app.URL+path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Body.Close() })
	return r
}

func identity(t *testing.T, r *http.Response) Identity {
	var id Identity
	if err := json.NewDecoder(r.Body).Decode(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func cookie(r *http.Response, name string) *http.Cookie {
	for _, c := range r.Cookies() {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func TestMiddleware(t *testing.T) {
	f := setUp(t)

	t.Run("no credential and a bad one are 401", func(t *testing.T) {
		if r := f.get(t, "/orders", nil); r.StatusCode != 401 {
			t.Fatalf("no credential: %d", r.StatusCode)
		}
		r := f.get(t, "/orders", http.Header{"Authorization": {"Bearer not-a-session"}})
		if r.StatusCode != 401 || r.Header.Get("WWW-Authenticate") != `Bearer error="invalid_token"` {
			t.Fatalf("bad token: %d %q", r.StatusCode, r.Header.Get("WWW-Authenticate"))
		}
	})

	t.Run("a session passes by bearer or cookie, and its JWT cookie is refreshed", func(t *testing.T) {
		s := f.create(t)
		r := f.get(t, "/orders", http.Header{"Authorization": {"Bearer " + s.SessionToken}})
		if r.StatusCode != 200 {
			t.Fatalf("bearer: %d", r.StatusCode)
		}
		if id := identity(t, r); id.UserID != s.UserId || id.Origin != "ORIGIN_NEW" {
			t.Fatalf("identity: %+v", id)
		}
		jwt := regexp.MustCompile(`^__Host-sg_jwt=ey[^;]+; Path=/; Max-Age=\d+; HttpOnly; Secure; SameSite=Lax$`)
		if set := r.Header.Values("Set-Cookie"); len(set) != 1 || !jwt.MatchString(set[0]) {
			t.Fatalf("JWT cookie: %q", set)
		}
		r = f.get(t, "/orders", http.Header{"Cookie": {"theme=dark; __Host-sg_session=" + s.SessionToken}})
		if r.StatusCode != 200 || identity(t, r).SessionID != s.Session.SessionId {
			t.Fatalf("cookie: %d", r.StatusCode)
		}
	})

	t.Run("a legacy token is migrated in passing and the new session is what the browser keeps", func(t *testing.T) {
		r := f.get(t, "/orders", http.Header{"Authorization": {"Bearer " + f.legacy}})
		if r.StatusCode != 200 {
			t.Fatalf("legacy: %d", r.StatusCode)
		}
		id := identity(t, r)
		if !id.Migrated || id.Origin != "ORIGIN_NEW" {
			t.Fatalf("identity: %+v", id)
		}
		session := cookie(r, "__Host-sg_session")
		if session == nil || !strings.HasPrefix(session.Value, "sgs_") || !session.HttpOnly || !session.Secure {
			t.Fatalf("session cookie: %+v", r.Header.Values("Set-Cookie"))
		}
		again := f.get(t, "/orders", http.Header{"Cookie": {"__Host-sg_session=" + session.Value}})
		if again.StatusCode != 200 || identity(t, again).UserID != id.UserID {
			t.Fatalf("the new session: %d", again.StatusCode)
		}
	})

	t.Run("a login route relays the flow and its cookie", func(t *testing.T) {
		r := f.get(t, "/login", nil)
		body := new(strings.Builder)
		_, _ = bufio.NewReader(r.Body).WriteTo(body)
		if body.String() != "FLOW_NEW" {
			t.Fatalf("flow: %q", body.String())
		}
		if c := cookie(r, "__Host-sg_flow"); c == nil || !strings.HasPrefix(c.Value, "v1.") {
			t.Fatalf("flow cookie: %q", r.Header.Values("Set-Cookie"))
		}
	})

	t.Run("sessiongate down is 503 with a retry hint, never 401", func(t *testing.T) {
		s := f.create(t)
		f.sg.stop()
		r := f.get(t, "/orders", http.Header{"Authorization": {"Bearer " + s.SessionToken}})
		if r.StatusCode != 503 || r.Header.Get("Retry-After") != "1" {
			t.Fatalf("outage: %d %q", r.StatusCode, r.Header.Get("Retry-After"))
		}
		if r := f.get(t, "/login", nil); r.StatusCode != 200 {
			t.Fatalf("a login route shows the legacy login on an outage: %d", r.StatusCode)
		}
	})
}
