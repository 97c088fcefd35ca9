// Command client is the real-node test's client image (test/cluster): an
// application pod as a user would write it, taking OPENAI_API_KEY and
// OPENAI_BASE_URL from the token Secret through envFrom and calling the proxy
// with the openai-go SDK. It prints one JSON object, a [Report], as its last
// line of output, which the test reads from the pod's log.
//
//	client journey   one chat completion, one stream, one /auth/refresh
//	client loop      chat completions one after another for -duration,
//	                 counting every failure (the SDK retries nothing)
//	client get       one GET of -url, its status or error (NetworkPolicy checks)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// Report is what the client saw.
type Report struct {
	// BaseURL is the OPENAI_BASE_URL it was given.
	BaseURL string `json:"baseURL"`
	// Requests and Failures count the chat completions sent and refused or
	// broken; Errors holds the first few failures.
	Requests int      `json:"requests"`
	Failures int      `json:"failures"`
	Errors   []string `json:"errors,omitempty"`
	// Tokens is the sum of usage.total_tokens of every successful request,
	// streamed or not; Streamed the part of it that came in streams.
	Tokens   int64 `json:"tokens"`
	Streamed int64 `json:"streamed"`
	// GetStatus and GetError are the answer to client get.
	GetStatus int    `json:"getStatus,omitempty"`
	GetError  string `json:"getError,omitempty"`
	// RefreshStatus and RefreshExpiresIn are /auth/refresh's answer.
	RefreshStatus    int   `json:"refreshStatus,omitempty"`
	RefreshExpiresIn int64 `json:"refreshExpiresIn,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: client journey|loop [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	model := fs.String("model", "", "the model to call")
	duration := fs.Duration("duration", time.Minute, "loop: how long to send requests")
	pause := fs.Duration("pause", 50*time.Millisecond, "loop: the pause between two requests")
	url := fs.String("url", "", "get: the URL")
	_ = fs.Parse(os.Args[2:])

	baseURL := os.Getenv("OPENAI_BASE_URL")
	rep := Report{BaseURL: baseURL}
	// option.WithMaxRetries(0): a request the proxy drops must show up here,
	// not be hidden by the SDK's retry.
	c := openai.NewClient(option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
	ctx := context.Background()
	var err error
	if os.Args[1] != "get" {
		err = waitReachable(ctx, baseURL+"/models", 30*time.Second)
	}
	switch {
	case err != nil:
	case os.Args[1] == "journey":
		err = journey(ctx, c, *model, &rep)
	case os.Args[1] == "loop":
		loop(ctx, c, *model, *duration, *pause, &rep)
	case os.Args[1] == "get":
		get(ctx, *url, &rep)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
}

func params(model, prompt string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:               model,
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage(prompt)},
		MaxCompletionTokens: openai.Int(16),
	}
}

func chat(ctx context.Context, c openai.Client, model string, rep *Report) error {
	rep.Requests++
	res, err := c.Chat.Completions.New(ctx, params(model, "Hello from a pod."))
	if err == nil && res.Usage.TotalTokens == 0 {
		err = errors.New("a completion without usage")
	}
	if err != nil {
		rep.Failures++
		if len(rep.Errors) < 5 {
			rep.Errors = append(rep.Errors, err.Error())
		}
		return err
	}
	rep.Tokens += res.Usage.TotalTokens
	return nil
}

func journey(ctx context.Context, c openai.Client, model string, rep *Report) error {
	if err := chat(ctx, c, model, rep); err != nil {
		return fmt.Errorf("chat completion: %w", err)
	}
	p := params(model, "Stream to a pod.")
	p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	rep.Requests++
	stream := c.Chat.Completions.NewStreaming(ctx, p)
	var chunks, usage int64
	for stream.Next() {
		chunks++
		if cur := stream.Current(); cur.JSON.Usage.Valid() {
			usage = cur.Usage.TotalTokens
		}
	}
	if err := stream.Err(); err != nil {
		rep.Failures++
		return fmt.Errorf("stream: %w", err)
	}
	if chunks < 2 || usage == 0 {
		rep.Failures++
		return fmt.Errorf("stream: %d chunks, usage %d", chunks, usage)
	}
	rep.Tokens += usage
	rep.Streamed = usage

	// /auth/refresh sits beside /v1 on the proxy, which forwards it to the
	// operator.
	var body struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	var resp *http.Response
	root := strings.TrimSuffix(strings.TrimSuffix(rep.BaseURL, "/"), "v1")
	err := c.Post(ctx, "auth/refresh", nil, &body, option.WithBaseURL(root), option.WithResponseInto(&resp))
	if resp != nil {
		rep.RefreshStatus = resp.StatusCode
	}
	if err != nil {
		return fmt.Errorf("refresh: %w", err)
	}
	if body.AccessToken == "" {
		return errors.New("refresh: no access_token")
	}
	rep.RefreshExpiresIn = body.ExpiresIn
	// The fresh token works.
	fresh := openai.NewClient(option.WithMaxRetries(0), option.WithAPIKey(body.AccessToken))
	if err := chat(ctx, fresh, model, rep); err != nil {
		return fmt.Errorf("chat completion with the refreshed token: %w", err)
	}
	return nil
}

func loop(ctx context.Context, c openai.Client, model string, d, pause time.Duration, rep *Report) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		_ = chat(ctx, c, model, rep)
		time.Sleep(pause)
	}
}

// get reports what GET url answers, asking again for 10 s while the
// connection is refused or dropped (a network policy controller admits a
// new pod a moment after it starts); the last error if it never answers.
func get(ctx context.Context, url string, rep *Report) {
	status, err := httpStatus(ctx, url, 10*time.Second)
	rep.GetStatus = status
	if err != nil {
		rep.GetError = err.Error()
	}
}

// waitReachable waits until url answers anything over HTTP: a network
// policy controller admits a new pod's traffic a moment after it starts,
// and the requests the test counts must not fall into that moment.
func waitReachable(ctx context.Context, url string, d time.Duration) error {
	_, err := httpStatus(ctx, url, d)
	return err
}

func httpStatus(ctx context.Context, url string, d time.Duration) (int, error) {
	deadline := time.Now().Add(d)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		req, err := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
		if err != nil {
			cancel()
			return 0, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			cancel()
			return resp.StatusCode, nil
		}
		cancel()
		if time.Now().After(deadline) {
			return 0, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
