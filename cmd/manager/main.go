// Command manager runs the llm-user-operator: it reconciles LLMUsers and
// LLMQuotas into signing keys, per-user token Secrets and quota status, and
// runs the proxy workload its configuration file describes.
package main

import (
	"flag"
	"os"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/llm-user-operator/llm-user-operator/internal/manager"
)

func main() {
	o := manager.NewOptions()
	o.BindFlags(flag.CommandLine)
	zo := zap.Options{}
	zo.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zo)))

	if err := manager.Run(ctrl.SetupSignalHandler(), o); err != nil {
		ctrl.Log.Error(err, "operator failed")
		os.Exit(1)
	}
}
