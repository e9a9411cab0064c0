"""What both pages of the report share: the style sheet and the Content-Security-Policy of the
static page (the interactive one adds its inline script to it: :data:`EXPLORE_CSP`)."""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#ffffff; --alt:#f5f7fa;
--accent:#2b5c9e; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1f2a3c; color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 6px; font-size:26px; font-weight:600; }
header p { margin:0; color:#c9d3e3; font-size:14px; }
main { max-width:1240px; margin:0 auto; padding:10px 40px 60px; }
nav { margin:22px 0 8px; padding:12px 18px; background:var(--alt); border:1px solid var(--line);
border-radius:6px; }
nav ol { margin:0; padding-left:20px; columns:2; }
nav a { color:var(--accent); text-decoration:none; }
section { margin-top:34px; }
h2 { font-size:21px; border-bottom:2px solid var(--line); padding-bottom:4px; margin-bottom:12px; }
h3 { font-size:17px; margin:22px 0 8px; }
p.lead, p.note { color:var(--muted); margin:6px 0 12px; }
p.note { font-size:13px; }
table { border-collapse:collapse; margin:8px 0 14px; font-size:13.5px; }
th, td { border:1px solid var(--line); padding:4px 10px; text-align:right; white-space:nowrap; }
th { background:var(--alt); font-weight:600; }
td.l, th.l { text-align:left; }
tbody tr:nth-child(even) td { background:#fafbfc; }
.scroll { overflow-x:auto; }
figure { margin:14px 0 26px; padding:12px; border:1px solid var(--line); border-radius:6px;
background:#fff; }
figure img { display:block; max-width:100%; height:auto; margin:0 auto; }
figcaption { margin-top:8px; font-size:13px; color:var(--muted); }
figcaption b { color:var(--fg); }
figcaption .files { margin-left:6px; }
figcaption .files a { color:var(--accent); }
details { margin:8px 0; }
details > summary { cursor:pointer; color:var(--accent); font-weight:600; margin:6px 0; }
pre { background:var(--alt); border:1px solid var(--line); padding:10px; font-size:12.5px;
overflow-x:auto; }
.empty { color:var(--muted); font-style:italic; }
dl.settings { display:grid; grid-template-columns:max-content auto; gap:2px 16px; font-size:14px; }
dl.settings dt { color:var(--muted); }
dl.settings dd { margin:0; }
footer { color:var(--muted); font-size:12.5px; text-align:center; padding:20px; border-top:1px solid
var(--line); }
"""

#: the interactive page runs its own inline script, and nothing else: no eval, no remote script,
#: no connection (``connect-src`` falls back to 'none')
EXPLORE_CSP = CSP + "; script-src 'unsafe-inline'"
