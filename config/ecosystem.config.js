// PM2 process file for ToolCall Store: `pm2 start config/ecosystem.config.js`, then `pm2 save`.
//
// The API runs as one supervised process (`toolcallstore serve`) reading its settings and
// secrets from the env file itself (`--env-file`), so no secret lands in PM2's dump file.
// Paths default to the layout of the README's Deploy section; override them in the
// environment of the `pm2 start` that registers the app:
//   TOOLCALLSTORE_ENV_FILE   settings and secrets, mode 600  (/etc/toolcallstore/toolcallstore.env)
//   TOOLCALLSTORE_HOME       working directory: the SQLite store, the admin key file
//                                                            (/var/lib/toolcallstore)
//   TOOLCALLSTORE_LOG_DIR    PM2's log files                 (/var/log/toolcallstore)
//   TOOLCALLSTORE_PYTHON     the virtualenv's python         (<repo>/.venv/bin/python)
//   TOOLCALLSTORE_PM2_NAME   the app's name in PM2           (toolcallstore)
//   TOOLCALLSTORE_MAX_MEMORY restart above this resident size (1G)
// The port (from `storectl assign`) and the shutdown grace period are read from the env file
// (TOOLCALLSTORE_PORT, TOOLCALLSTORE_SHUTDOWN_GRACE_SECONDS), so they are written in one place.
"use strict";

const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const envFile = process.env.TOOLCALLSTORE_ENV_FILE || "/etc/toolcallstore/toolcallstore.env";
const home = process.env.TOOLCALLSTORE_HOME || "/var/lib/toolcallstore";
const logs = process.env.TOOLCALLSTORE_LOG_DIR || "/var/log/toolcallstore";
const python = process.env.TOOLCALLSTORE_PYTHON || path.join(root, ".venv", "bin", "python");

// One NAME=value of the env file (the server reads the whole file itself at start).
function fromEnvFile(name, fallback) {
  let text = "";
  try {
    text = fs.readFileSync(envFile, "utf8");
  } catch (err) {
    return process.env[name] || fallback;
  }
  for (const raw of text.split("\n")) {
    const line = raw.trim().replace(/^export\s+/, "");
    if (line.startsWith(name + "=")) {
      return line.slice(name.length + 1).trim().replace(/^(['"])(.*)\1$/, "$2");
    }
  }
  return process.env[name] || fallback;
}

const port = fromEnvFile("TOOLCALLSTORE_PORT", "8080");
const grace = Number(fromEnvFile("TOOLCALLSTORE_SHUTDOWN_GRACE_SECONDS", "10"));

module.exports = {
  apps: [
    {
      name: process.env.TOOLCALLSTORE_PM2_NAME || "toolcallstore",
      script: python,
      interpreter: "none",
      args: ["-m", "toolcallstore", "--env-file", envFile, "serve", "--port", String(port)],
      cwd: home,
      exec_mode: "fork",
      instances: 1,
      env: { PYTHONUNBUFFERED: "1" },
      // Restart on any exit; a start that dies within 10 s counts as unstable, and after 10
      // of those in a row PM2 gives up (the watchdog cron line and `pm2 logs` tell).
      autorestart: true,
      min_uptime: "10s",
      max_restarts: 10,
      exp_backoff_restart_delay: 200,
      max_memory_restart: process.env.TOOLCALLSTORE_MAX_MEMORY || "1G",
      // PM2 stops with SIGINT, which the server treats as SIGTERM: stop listening, let open
      // requests (streams too) and running jobs finish within the grace period, hand the
      // other jobs back. SIGKILL comes only after kill_timeout: longer than the grace period,
      // twice over for `--processes N`, whose jobs get theirs after their requests'.
      kill_timeout: (2 * grace + 10) * 1000,
      out_file: path.join(logs, "api.out.log"),
      error_file: path.join(logs, "api.err.log"),
      merge_logs: true,
      time: true,
    },
  ],
};
