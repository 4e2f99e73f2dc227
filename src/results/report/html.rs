//! HTML assembly helpers of the report: escaping, times for people, and the inline
//! CSS and scripts (sortable tables, the error log the end-to-end test reads).

/// HTML text and attribute escaping.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

pub(super) fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: f64) -> String {
    let t = secs.max(0.0).floor() as i64;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(super) fn human_secs(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.2} h", s / 3600.0)
    }
}

/// First in `<head>`: every script error, console error and failed picture load is
/// recorded in `<html data-errors>` (the end-to-end test reads it from the DOM).
pub(super) const ERROR_LOG_JS: &str = r#"(function(){var errs=[];function rec(m){errs.push(String(m));document.documentElement.setAttribute('data-errors',errs.join(' | '));}
window.addEventListener('error',function(e){var t=e.target;if(t&&t!==window&&(t.src||t.href)){rec('failed to load '+(t.src||t.href));}else{rec(e.message||'error');}},true);
window.addEventListener('unhandledrejection',function(e){rec('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){rec(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments);};})();"#;

/// Last in `<body>`: click a header to sort (numbers as numbers, again to reverse);
/// "all columns" shows hidden ones; on load, count the pictures that decoded.
pub(super) const SORT_JS: &str = r#"(function(){
function key(td){var v=td.getAttribute('data-v');return v===null?td.textContent:v;}
function sortBy(table,i,th){var asc=th.getAttribute('aria-sort')!=='ascending';
table.querySelectorAll('th').forEach(function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
if(x===''&&y!=='')return 1;if(y===''&&x!=='')return -1;
var nx=parseFloat(x),ny=parseFloat(y);var c=(!isNaN(nx)&&!isNaN(ny)&&isFinite(x)&&isFinite(y))?nx-ny:x.localeCompare(y);
return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});}
document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){sortBy(t,i,th);});});});
document.querySelectorAll('input.allcols').forEach(function(cb){cb.addEventListener('change',function(){
cb.closest('.tbl').classList.toggle('all',cb.checked);});});
window.addEventListener('load',function(){var ok=0,bad=0;
Array.prototype.forEach.call(document.images,function(im){if(im.complete&&im.naturalWidth>0){ok++;}else{bad++;}});
var d=document.documentElement;d.setAttribute('data-images-ok',ok);d.setAttribute('data-images-bad',bad);d.setAttribute('data-ready','1');});
})();"#;

pub(super) const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:14px 24px}
h1{margin:0 0 4px;font-size:24px}h2{margin:28px 0 10px;font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:16px 0 6px;display:inline-block}h4{margin:0 0 4px;font-size:14px;word-break:break-all}
main{padding:0 24px 40px}.desc{max-width:80em;margin:4px 0 8px}.muted{color:#777;font-weight:normal}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:6px 0}dl.meta dt{color:#666}dl.meta dd{margin:0}
nav a{margin-right:14px}code{background:#f0f0f0;padding:1px 4px;border-radius:3px}
.scroll{overflow-x:auto;max-width:100%}
table.data{border-collapse:collapse;background:#fff;margin:4px 0 12px;font-variant-numeric:tabular-nums}
table.data th,table.data td{border:1px solid #ddd;padding:3px 8px;text-align:left;white-space:nowrap}
table.data td.num{text-align:right}
table.data th{background:#f3f3f3;cursor:pointer;user-select:none}
table.data th[aria-sort=ascending]::after{content:" ▲"}table.data th[aria-sort=descending]::after{content:" ▼"}
.tbl:not(.all) .x{display:none}.toggle{margin-left:12px;color:#555;font-size:13px}
td.zero{color:#bbb}
.st-failed,td.st-failed{color:#b00020}.st-diverged,td.st-diverged{color:#b35900}.st-skipped,.st-interrupted{color:#777}
.st-running{color:#0b62a4}
.badge{display:inline-block;border-radius:9px;padding:0 8px;font-size:12px;font-weight:normal;border:1px solid currentColor}
.badge.st-cached,.badge.st-ran{color:#2e7d32}.badge.st-pending{color:#888}
ul.problems li{margin:3px 0}
svg{max-width:100%;height:auto}
svg.dag .node rect{fill:#f3f3f3;stroke:#999}svg.dag .n-done rect{fill:#e8f5e9;stroke:#2e7d32}
svg.dag .n-failed rect{fill:#fdecea;stroke:#b00020}svg.dag .n-diverged rect{fill:#fff4e5;stroke:#b35900}
svg.dag .n-running rect{fill:#e3f2fd;stroke:#0b62a4}
svg.dag text{font:12px sans-serif;fill:#333}svg.dag .n1{font-weight:bold;font-size:13px}svg.dag .n3{fill:#555}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:4px}
figure.picture img{display:block;max-width:512px;image-rendering:pixelated;min-width:200px}
figcaption{font-size:12px;color:#555;padding:2px}
details.stage{margin:8px 0}details.stage>summary{cursor:pointer}
article.instance{background:#fff;border:1px solid #e3e3e3;border-left:4px solid #9e9e9e;margin:8px 0;padding:8px 12px}
article.st-cached,article.st-ran{border-left-color:#2e7d32}article.st-failed{border-left-color:#b00020}
article.st-diverged{border-left-color:#b35900}article.st-running{border-left-color:#0b62a4}
.facts{margin:0 0 6px;color:#555;font-size:12px}.reason{color:#b00020;white-space:pre-wrap;margin:4px 0}
article.st-diverged .reason{color:#b35900}
table.metrics{border-collapse:collapse;font-size:12px;margin:4px 0 8px;float:right;margin-left:12px}
table.metrics th{text-align:left;font-weight:normal;color:#555;padding:0 8px 0 0}table.metrics td{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:8px;clear:none}.files{font-size:12px;clear:both}
article.instance::after{content:"";display:block;clear:both}
"#;
