/**
 * Runs a real nginx (Debian nginx-light) as a child process serving a temp
 * directory on 127.0.0.1 and a free port. Fails loudly when nginx is missing.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

const findNginx = (): string => {
  for (const candidate of [process.env.NGINX, "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]) {
    if (candidate !== undefined && candidate !== "" && existsSync(candidate)) return candidate
  }
  try {
    return execFileSync("sh", ["-c", "command -v nginx"], { encoding: "utf8" }).trim()
  } catch {
    throw new Error(
      "nginx not found (looked for $NGINX, /usr/sbin/nginx, /usr/local/sbin/nginx, /usr/bin/nginx and PATH): " +
        "the HTTP backend is tested against a real nginx; install it (Debian/Ubuntu: apt-get install -y nginx-light)"
    )
  }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const probe = createServer()
    probe.once("error", reject)
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      probe.close(() => resolve(port))
    })
  })

export class Nginx {
  private child: ChildProcess | undefined
  private stderr = ""
  dir = ""
  root = ""
  port = 0

  async start(): Promise<void> {
    const binary = findNginx()
    this.dir = await mkdtemp(join(tmpdir(), "qcow2-nginx-"))
    this.root = join(this.dir, "www")
    await mkdir(this.root)
    // Workers may run as another user (nobody) when the tests run as root.
    await chmod(this.dir, 0o755)
    await chmod(this.root, 0o755)
    this.port = await freePort()
    const d = this.dir
    const conf = [
      "daemon off;",
      "worker_processes 1;",
      `pid ${d}/nginx.pid;`,
      `error_log ${d}/error.log warn;`,
      "events { worker_connections 256; }",
      "http {",
      "  log_format counted '$request_method $uri \"$http_range\" \"$http_if_match\" $status $body_bytes_sent';",
      `  access_log ${d}/access.log counted;`,
      `  client_body_temp_path ${d}/client_body;`,
      `  proxy_temp_path ${d}/proxy;`,
      `  fastcgi_temp_path ${d}/fastcgi;`,
      `  uwsgi_temp_path ${d}/uwsgi;`,
      `  scgi_temp_path ${d}/scgi;`,
      "  default_type application/octet-stream;",
      "  sendfile on;",
      "  server {",
      `    listen 127.0.0.1:${this.port};`,
      `    root ${this.root};`,
      "  }",
      "}",
      ""
    ].join("\n")
    await writeFile(join(d, "nginx.conf"), conf)
    const child = spawn(binary, ["-p", d, "-c", join(d, "nginx.conf"), "-e", join(d, "error.log")], {
      stdio: ["ignore", "ignore", "pipe"]
    })
    this.child = child
    child.stderr?.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString()
    })
    const exited = new Promise<never>((_, reject) => {
      child.once("error", reject)
      child.once("exit", (code) => reject(new Error(`nginx exited with code ${code} at startup: ${this.stderr}`)))
    })
    exited.catch(() => undefined)
    const deadline = Date.now() + 15_000
    await writeFile(join(this.root, ".ready"), "ok")
    for (;;) {
      const up = await Promise.race([
        fetch(`http://127.0.0.1:${this.port}/.ready`).then((r) => r.ok, () => false),
        exited
      ])
      if (up) break
      if (Date.now() > deadline) throw new Error(`nginx did not answer on port ${this.port}: ${this.stderr}`)
      await new Promise((r) => setTimeout(r, 50))
    }
    await this.clearLog()
  }

  async stop(): Promise<void> {
    const child = this.child
    if (child !== undefined && child.exitCode === null) {
      const gone = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGTERM")
      await gone
    }
    this.child = undefined
    if (this.dir !== "") await rm(this.dir, { recursive: true, force: true })
  }

  url(name: string): string {
    return `http://127.0.0.1:${this.port}/${name}`
  }

  /** Writes a file into the served directory and returns its URL. */
  async put(name: string, data: Uint8Array): Promise<string> {
    const path = join(this.root, name)
    await writeFile(path, data)
    await chmod(path, 0o644)
    return this.url(name)
  }

  /**
   * Access-log lines: `METHOD /uri "range" "if-match" status bytes`.
   * nginx logs a request after its response has gone out, so a client can
   * be done before the last line is written: this waits (up to 5 s) until
   * there are at least `expected` lines.
   */
  async accessLog(expected = 0): Promise<Array<string>> {
    const deadline = Date.now() + 5_000
    for (;;) {
      const text = await readFile(join(this.dir, "access.log"), "utf8").catch(() => "")
      const lines = text.split("\n").filter((line) => line !== "")
      if (lines.length >= expected || Date.now() > deadline) return lines
      await new Promise((r) => setTimeout(r, 10))
    }
  }

  async clearLog(): Promise<void> {
    await writeFile(join(this.dir, "access.log"), "")
  }
}
