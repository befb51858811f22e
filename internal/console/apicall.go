package console

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/pgfleet/pgfleet/internal/api"
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
	api http.RoundTripper // api.InProcess of the agent's API handler
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
	req, err := http.NewRequestWithContext(ctx, method, api.InProcessURL+path, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.api.RoundTrip(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
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
