"""The dashboard's stylesheet and script, served by the dashboard itself (no CDN, no build step).

Kept as Python strings so they ship inside the package with no package-data setup. They
are separate responses rather than inline so the pages can forbid inline scripts (CSP).
"""

from services.reads.audit import RECORD_CSS

CSS = (
    RECORD_CSS
    + """
body{max-width:1300px}header h1{margin-bottom:.2rem}header p{margin:.2rem 0}
.readonly{background:#fff8c5;border:1px solid #d4a72c;padding:4px 8px;display:inline-block;border-radius:4px}
#live.ok{color:#1a7f37}#live.stale{color:#cf222e}
progress{width:140px;vertical-align:middle}.pct{font-variant-numeric:tabular-nums}
ul.figs{margin:0;padding-left:1rem}ul.figs li{white-space:nowrap}
table.facts{width:auto}table.facts th{width:9rem}
p.filters a{margin:0 .15rem}p.filters a.on{font-weight:600;color:#1b1f24;text-decoration:none}
figure{margin:.5rem 0}svg.series{display:block;max-width:100%;height:auto}
tr.status-refused td.runtime,tr.status-invalid td.runtime{color:#cf222e;font-weight:600}tr.status-stale{color:#57606a}
details summary{cursor:pointer;color:#57606a}
"""
)

# Swaps in the sections the server renders (already escaped) and ticks open windows'
# progress between pushes, correcting for the offset between the browser's and the server's clocks.
JS = """(function () {
  'use strict';
  var stream = document.body.getAttribute('data-stream');
  var live = document.getElementById('live');
  var offset = 0;
  function tick() {
    var now = Date.now() - offset;
    document.querySelectorAll('progress[data-ends]').forEach(function (bar) {
      var s = Date.parse(bar.getAttribute('data-starts')), e = Date.parse(bar.getAttribute('data-ends'));
      var f = e > s ? Math.min(1, Math.max(0, (now - s) / (e - s))) : 1;
      bar.value = f;
      var pct = bar.nextElementSibling;
      if (pct && pct.className === 'pct') { pct.textContent = Math.round(f * 100) + '%'; }
    });
  }
  if (!stream) { return; }
  var source = new EventSource(stream);
  source.addEventListener('sections', function (message) {
    var update = JSON.parse(message.data);
    offset = Date.now() - Date.parse(update.now);
    Object.keys(update.sections).forEach(function (id) {
      var section = document.getElementById(id);
      if (!section) { return; }
      // only a section that changed is swapped: a swap replaces every element in it, so a link
      // someone is about to click (the page's first push repeats what the page was served with) stays
      var next = document.createElement('template');
      next.innerHTML = update.sections[id];
      if (next.innerHTML !== section.innerHTML) { section.innerHTML = update.sections[id]; }
    });
    document.body.setAttribute('data-seq', String(update.seq));
    live.textContent = 'live \\u00b7 log sequence ' + update.seq;
    live.className = 'ok';
    tick();
  });
  source.addEventListener('error', function () {
    // CLOSED: the browser gave up (an answer that is no stream, e.g. 503 when too many live views are
    // open), so say so rather than promise a reconnect that will not come
    live.textContent = source.readyState === EventSource.CLOSED
      ? 'not live: reload the page to try again (what you see may be stale)'
      : 'disconnected: reconnecting\\u2026 (what you see may be stale)';
    live.className = 'stale';
  });
  setInterval(tick, 1000);
})();
"""
