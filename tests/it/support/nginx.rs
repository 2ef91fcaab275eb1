//! A real nginx (the Debian package) per test, in its own temp dir, in front of whatever the
//! test serves. Its listening socket is bound here, on `127.0.0.1:0`, and handed over through
//! the `NGINX` environment variable — nginx's own way of inheriting sockets (its binary
//! upgrade) — so there is no port race and no waiting: connections queue on the socket until
//! nginx accepts them.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::process::Stdio;

use tokio::process::{Child, Command};

pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _listener: TcpListener,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Runs nginx with `http` as the body of its `http {}` block; `{listen}` in it is replaced
    /// by the listen address.
    pub fn start(http: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback socket");
        let addr = listener.local_addr().unwrap();
        // The child must inherit it.
        rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).expect("fcntl");
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\nerror_log stderr warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{}\n}}\n",
            http.replace("{listen}", &addr.to_string())
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let bin = std::env::var("NGINX_BIN").unwrap_or_else(|_| {
            let sbin = "/usr/sbin/nginx";
            if std::path::Path::new(sbin).exists() {
                sbin
            } else {
                "nginx"
            }
            .to_owned()
        });
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .env("NGINX", format!("{};", listener.as_raw_fd()))
            .stdin(Stdio::null())
            .spawn()
            .expect("nginx starts (the Debian package nginx; scripts/test installs it)");
        Self {
            child,
            addr,
            _listener: listener,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Fails if nginx has exited (a configuration error, say).
    pub fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().expect("wait").is_none(),
            "nginx exited: see its stderr above"
        );
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM to the master, which stops its worker too (SIGKILL would orphan it). Its
        // own `master_process off` mode would need no worker, but crashes on inherited
        // sockets (nginx 1.22).
        if let Some(pid) = self
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}
