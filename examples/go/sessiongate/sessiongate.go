// Package sessiongate protects net/http routes with sessiongate: copy this file into your
// service, next to the client that `buf generate` (buf.gen.yaml) writes for you.
//
//	gate, err := sessiongate.New(sessiongate.Options{
//		Target:        "dns:///sessiongate-headless:50051",
//		APIKey:        os.Getenv("SESSIONGATE_KEY"),
//		ServiceConfig: serviceConfig, // clients/service-config.json, e.g. go:embed
//		DialOptions:   []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
//	})
//	mux.Handle("/orders", gate.Protect(orders))        // sessiongate.IdentityFrom(r.Context())
//	mux.Handle("/login", gate.LoginFlow("login", login)) // sessiongate.FlowFrom(r.Context())
//
// One gRPC connection per process, balanced over every pod with the published service config
// (deadlines, retries on UNAVAILABLE). A request carries its credential as
// `Authorization: Bearer …` or in the session cookie; INVALID answers 401, sessiongate
// unreachable 503 (never 401: nobody is logged out by an outage). A legacy token is migrated
// in passing (`auto_migrate`) and the new session's cookies are set; a fresh `session_jwt`
// from sessiongate replaces the JWT cookie.
//
// It builds with grpc-go 1.33 and newer (Debian 12 packages 1.33; the test command builds and
// tests it there) and the Go 1.19 standard library.
package sessiongate

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	sessiongatev1 "sessiongate.dev/gen/go/sessiongate/v1"
)

// Options configures a Gate. Target and APIKey are required, and DialOptions must say how to
// secure the connection (grpc.WithTransportCredentials(...)).
type Options struct {
	Target        string
	APIKey        string
	ServiceConfig string // the JSON of clients/service-config.json
	DialOptions   []grpc.DialOption
	SessionCookie string        // default "__Host-sg_session"
	JWTCookie     string        // default "__Host-sg_jwt"
	FlowCookie    string        // default "__Host-sg_flow"
	Deadline      time.Duration // per call; default 500 ms
	// NoAutoMigrate leaves legacy tokens LEGACY instead of migrating them in passing.
	NoAutoMigrate bool
}

// Identity is who a protected request is from.
type Identity struct {
	UserID    string `json:"userId"`
	SessionID string `json:"sessionId"`
	Origin    string `json:"origin"` // ORIGIN_NEW or ORIGIN_LEGACY
	Provider  string `json:"provider"`
	Subject   string `json:"subject"`
	Migrated  bool   `json:"migrated"` // this request moved a legacy token to a new session
}

type ctxKey int

const (
	identityKey ctxKey = iota
	flowKey
)

// IdentityFrom returns the identity Protect put on a request's context.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey).(Identity)
	return id, ok
}

// FlowFrom returns the login flow LoginFlow chose: FLOW_NEW or FLOW_LEGACY.
func FlowFrom(ctx context.Context) string {
	if f, ok := ctx.Value(flowKey).(string); ok {
		return f
	}
	return sessiongatev1.Flow_FLOW_LEGACY.String()
}

// Gate is the middleware; one per process.
type Gate struct {
	o    Options
	conn *grpc.ClientConn
	api  sessiongatev1.SessionGateServiceClient
}

// New dials sessiongate (lazily: the first call connects).
func New(o Options) (*Gate, error) {
	if o.Target == "" || o.APIKey == "" {
		return nil, errors.New("sessiongate: Target and APIKey are required")
	}
	if o.SessionCookie == "" {
		o.SessionCookie = "__Host-sg_session"
	}
	if o.JWTCookie == "" {
		o.JWTCookie = "__Host-sg_jwt"
	}
	if o.FlowCookie == "" {
		o.FlowCookie = "__Host-sg_flow"
	}
	if o.Deadline == 0 {
		o.Deadline = 500 * time.Millisecond
	}
	opts := append([]grpc.DialOption{}, o.DialOptions...)
	if o.ServiceConfig != "" {
		opts = append(opts, grpc.WithDefaultServiceConfig(o.ServiceConfig))
	}
	conn, err := grpc.Dial(o.Target, opts...)
	if err != nil {
		return nil, err
	}
	return &Gate{o: o, conn: conn, api: sessiongatev1.NewSessionGateServiceClient(conn)}, nil
}

// Close closes the connection.
func (g *Gate) Close() error { return g.conn.Close() }

func (g *Gate) call(r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(r.Context(), g.o.Deadline)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+g.o.APIKey), cancel
}

// Protect lets a request through only with a valid credential; IdentityFrom says whose.
func (g *Gate) Protect(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token := bearer(r)
		if token == "" {
			if c, err := r.Cookie(g.o.SessionCookie); err == nil {
				token = c.Value
			}
		}
		if token == "" {
			w.Header().Set("WWW-Authenticate", "Bearer")
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "unauthenticated"})
			return
		}
		ctx, cancel := g.call(r)
		defer cancel()
		v, err := g.api.ValidateSession(ctx, &sessiongatev1.ValidateSessionRequest{
			Token:       token,
			AutoMigrate: !g.o.NoAutoMigrate,
		})
		if err != nil {
			failed(w, err)
			return
		}
		if v.Verdict != sessiongatev1.Verdict_VERDICT_VALID {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{
				"error": "invalid_session", "reason": v.Reason.String(),
			})
			return
		}
		id := Identity{
			UserID:    v.UserId,
			SessionID: v.SessionId,
			Origin:    v.Origin.String(),
			Provider:  v.Provider,
			Subject:   v.Subject,
		}
		if m := v.Migration; m != nil {
			// A legacy token moved to a new session in this very call: from now on the
			// browser sends the new one.
			expires := m.GetSession().GetExpiresAt()
			http.SetCookie(w, credentialCookie(g.o.SessionCookie, m.SessionToken, expires))
			http.SetCookie(w, credentialCookie(g.o.JWTCookie, m.SessionJwt, expires))
			id.UserID = m.UserId
			id.SessionID = m.GetSession().GetSessionId()
			id.Origin = sessiongatev1.Origin_ORIGIN_NEW.String()
			id.Migrated = true
		} else if v.SessionJwt != "" {
			http.SetCookie(w, credentialCookie(g.o.JWTCookie, v.SessionJwt, v.ExpiresAt))
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey, id)))
	})
}

// LoginFlow, on a login route, chooses the login flow to show (FlowFrom) and relays the flow
// cookie, so the device stays where it was put. A failure shows the legacy login, the
// known-good path.
func (g *Gate) LoginFlow(flow string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chosen := sessiongatev1.Flow_FLOW_LEGACY.String()
		req := &sessiongatev1.ResolveFlowRequest{Flow: flow}
		if c, err := r.Cookie(g.o.FlowCookie); err == nil {
			req.FlowCookie = c.Value
		}
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			req.Ip = host
		}
		ctx, cancel := g.call(r)
		defer cancel()
		if d, err := g.api.ResolveFlow(ctx, req); err == nil {
			chosen = d.Flow.String()
			if c := d.GetSetCookie().GetHeaderValue(); c != "" {
				w.Header().Add("Set-Cookie", c)
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), flowKey, chosen)))
	})
}

func bearer(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "Bearer ") {
		if t := strings.TrimSpace(auth[7:]); t != "" && !strings.ContainsAny(t, " \t") {
			return t
		}
	}
	return ""
}

// credentialCookie is host-only, HTTPS only, never read by scripts, and ends with the session.
func credentialCookie(name, value string, expires *timestamppb.Timestamp) *http.Cookie {
	c := &http.Cookie{
		Name: name, Value: value, Path: "/",
		Secure: true, HttpOnly: true, SameSite: http.SameSiteLaxMode,
	}
	if expires != nil {
		if left := time.Until(expires.AsTime()); left > time.Second {
			c.MaxAge = int(left / time.Second)
		} else {
			c.MaxAge = -1
		}
	}
	return c
}

// failed answers an outage or a deadline with 503 and a retry hint; anything else is a bug of
// ours or a misconfiguration (a wrong key): 500.
func failed(w http.ResponseWriter, err error) {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "session_service_unavailable"})
	default:
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "session_check_failed"})
	}
}

func writeJSON(w http.ResponseWriter, code int, body interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
