// Package dashboard serves AdMetric's web dashboard: one page and its
// script, style sheet and icon, embedded in the binary so that nothing is
// fetched from elsewhere, at build time or at run time. The page draws
// everything from the service's own JSON API (GET /ads, GET /ads/analytics,
// and the ad management routes with the admin token the user enters).
package dashboard

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/admetric/admetric/api/respond"
)

//go:embed static
var static embed.FS

// Policy is the Content-Security-Policy of the dashboard's answers: its own
// scripts, styles and images only (no inline script or style), answers from
// its own origin only, and no framing by other pages.
const Policy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"

type file struct {
	body        []byte
	contentType string
	etag        string
}

// Dashboard serves the page at GET / and its files at GET /ui/{file}. It
// holds the files in memory and is safe for concurrent use.
type Dashboard struct {
	files map[string]file
}

// New loads the embedded files.
func New() (*Dashboard, error) {
	d := &Dashboard{files: map[string]file{}}
	err := fs.WalkDir(static, "static", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return err
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		sum := sha256.Sum256(body)
		d.files[strings.TrimPrefix(p, "static/")] = file{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, ok := d.files["index.html"]; !ok {
		return nil, fs.ErrNotExist
	}
	return d, nil
}

// Register mounts GET / and GET /ui/:file on r.
func (d *Dashboard) Register(r gin.IRouter) {
	r.GET("/", func(c *gin.Context) { d.serve(c, "index.html") })
	r.GET("/ui/:file", func(c *gin.Context) {
		name := c.Param("file")
		if name == "index.html" {
			name = "" // the page has one address, /
		}
		d.serve(c, name)
	})
}

func (d *Dashboard) serve(c *gin.Context, name string) {
	f, ok := d.files[name]
	if !ok {
		respond.Error(c, http.StatusNotFound, "file", "no such dashboard file")
		return
	}
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", Policy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	// The files change with the binary: a browser asks again each time and
	// gets a 304 while the ETag holds.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", f.etag)
	if match := c.GetHeader("If-None-Match"); match != "" && strings.Contains(match, f.etag) {
		c.Status(http.StatusNotModified)
		return
	}
	c.Data(http.StatusOK, f.contentType, f.body)
}
