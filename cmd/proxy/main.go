// Command proxy serves the OpenAI API in front of vLLM: it authenticates each
// request by its token, enforces model allowlists and quotas, forwards
// (streaming included), counts tokens, exports metrics and writes usage back
// into LLMUser and LLMQuota status.
package main

import (
	"flag"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/llm-user-operator/llm-user-operator/internal/proxyserver"
)

func main() {
	o := proxyserver.Defaults()
	o.BindFlags(flag.CommandLine)
	zo := zap.Options{}
	zo.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zo)))
	if err := proxyserver.Run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "proxy failed")
		os.Exit(1)
	}
}
