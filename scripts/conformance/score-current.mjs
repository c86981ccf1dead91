// Scores result files of the current cache-tests suite (its GitHub head, as cache-tests.fyi
// shows it) with the suite's own determineTestResult, in the output format of score.mjs.
// usage: node score-current.mjs SUITE_DIR RESULT.json [RESULT.json ...]
// SHOW_FAILED=1 also lists, per file, the failed required tests and the setup failures.
import path from 'path'
import fs from 'fs'
import { pathToFileURL } from 'url'

const dir = path.resolve(process.argv[2])
const tests = (await import(pathToFileURL(path.join(dir, 'tests/index.mjs')))).default
const { determineTestResult, resultTypes } = await import(pathToFileURL(path.join(dir, 'test-engine/lib/results.mjs')))
const name = Object.fromEntries(Object.entries(resultTypes).map(([k, v]) => [v[2], k]))

for (const f of process.argv.slice(3)) {
  const results = JSON.parse(fs.readFileSync(f, 'utf8'))
  const c = { req: 0, reqPass: 0, opt: 0, optPass: 0, setup: 0, harness: 0, dep: 0, failed: [], setupFailed: [] }
  for (const suite of tests) {
    for (const t of suite.tests) {
      if (t.browser_only) continue
      const kind = t.kind || 'required'
      if (kind === 'check') continue
      const k = name[determineTestResult(tests, t.id, results)[2]]
      if (k === 'untested') continue
      if (kind === 'required') { c.req++; if (k === 'pass') c.reqPass++; else c.failed.push(t.id) } else { c.opt++; if (k === 'pass') c.optPass++ }
      if (k === 'setup_fail' || k === 'retry') { c.setup++; c.setupFailed.push(t.id) }
      if (k === 'harness_fail') c.harness++
      if (k === 'dependency_fail') c.dep++
    }
  }
  console.log(`${path.basename(f, '.json').padEnd(22)} required ${c.reqPass}/${c.req}  optimal ${c.optPass}/${c.opt}  setup ${c.setup} harness ${c.harness} dep ${c.dep}`)
  if (process.env.SHOW_FAILED) {
    console.log(`  failed: ${c.failed.join(' ')}`)
    console.log(`  setup-failed: ${c.setupFailed.join(' ')}`)
  }
}
