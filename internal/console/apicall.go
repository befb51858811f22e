package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// apiError is an answer of the API that was not a success, in its words.
type apiError struct {
	Status  int
	Message string
}

func (e *apiError) Error() string { return e.Message }

// caller calls the agent's own API in process, with the signed-in user's
// token: the console reads and changes the fleet only as the CLI does,
// through the same handlers, authorization and validation.
type caller struct {
	api http.Handler
}

// recorder is the http.ResponseWriter an in-process call answers into.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}

// raw calls method path with body (JSON-encoded unless nil) and answers the
// status and the body as the API wrote them.
func (c caller) raw(ctx context.Context, token, method, path string, body any) (int, []byte, error) {
	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return 0, nil, fmt.Errorf("encode %s %s: %w", method, path, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, path, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	// The API's handlers see a request as from any client, except that it
	// never crossed a network.
	req.RemoteAddr = "console"
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	rec := &recorder{header: http.Header{}}
	c.api.ServeHTTP(rec, req)
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return rec.code, rec.body.Bytes(), nil
}

// do calls the API and decodes a success into out (unless nil); a failure
// is an *apiError with the API's own message.
func (c caller) do(ctx context.Context, token, method, path string, body, out any) error {
	code, b, err := c.raw(ctx, token, method, path, body)
	if err != nil {
		return err
	}
	return decodeAnswer(code, b, out)
}

func decodeAnswer(code int, b []byte, out any) error {
	if code < 200 || code > 299 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(http.StatusText(code))
		}
		return &apiError{Status: code, Message: e.Error}
	}
	if out == nil || len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode the API's answer: %w", err)
	}
	return nil
}
