// Command client is the real-node test's client image (test/cluster): an
// application pod as a user would write it, taking OPENAI_API_KEY and
// OPENAI_BASE_URL from the token Secret through envFrom and calling the proxy
// with the openai-go SDK. It prints one JSON object, a [Report], as its last
// line of output, which the test reads from the pod's log.
//
//	client journey   one chat completion, one stream, one /auth/refresh
//	client loop      chat completions one after another for -duration,
//	                 counting every failure (the SDK retries nothing)
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
	_ = fs.Parse(os.Args[2:])

	baseURL := os.Getenv("OPENAI_BASE_URL")
	rep := Report{BaseURL: baseURL}
	// option.WithMaxRetries(0): a request the proxy drops must show up here,
	// not be hidden by the SDK's retry.
	c := openai.NewClient(option.WithMaxRetries(0), option.WithRequestTimeout(30*time.Second))
	ctx := context.Background()
	var err error
	switch os.Args[1] {
	case "journey":
		err = journey(ctx, c, *model, &rep)
	case "loop":
		loop(ctx, c, *model, *duration, *pause, &rep)
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
