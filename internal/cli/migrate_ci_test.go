package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// README's "Migrations in CI" programs are the files in testdata, byte for
// byte between their markers, and each migrates an empty database so that
// `conduit migrate validate` passes.
func TestMigrationsInCIPrograms(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, program := range []string{"migrategoose", "migratelibrary"} {
		t.Run(program, func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(filepath.Join("testdata", program, "main.go"))
			if err != nil {
				t.Fatal(err)
			}
			begin, end := []byte("// README begin\n"), []byte("\n// README end")
			i, j := bytes.Index(src, begin), bytes.Index(src, end)
			if i < 0 || j < i {
				t.Fatalf("%s: no README markers", program)
			}
			if !bytes.Contains(readme, bytes.Trim(src[i+len(begin):j], "\n")) {
				t.Fatalf("README.md's %s program differs from testdata/%s/main.go: copy it over", program, program)
			}

			url := emptyDatabase(t)
			mustRun(t, ExitCheckFailed, url, "", "migrate", "validate")
			cmd := exec.Command("go", "run", "./testdata/"+program)
			cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("go run %s: %v\n%s", program, err, out)
			}
			mustRun(t, ExitOK, url, "", "migrate", "validate")
		})
	}
}
