//! The docker runtime's client: containers as instances, through the Docker Engine API
//! (bollard), on a current-thread tokio runtime this module owns.
//!
//! Nothing here enters a namespace: a container's network namespace is opened by path
//! (`/proc/<State.Pid>/ns/net`) right after inspect, and the netns helper enters it on a
//! dedicated thread, never on this runtime's thread (see `netns::run_in`).
//!
//! Every container gearnat makes is named by its instance id and carries four labels:
//! `gearnat.deployment`, `gearnat.instance`, `gearnat.spec` (a hash of image and environment)
//! and `gearnat.image` (the image as the file names it), so a later run finds its own
//! containers and knows which ones changed, and how.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, EventMessage, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures::{Stream, StreamExt};

use crate::netns::Netns;
pub use crate::plan::ContainerSpec;

pub const LABEL_DEPLOYMENT: &str = "gearnat.deployment";
pub const LABEL_INSTANCE: &str = "gearnat.instance";
pub const LABEL_SPEC: &str = "gearnat.spec";
pub const LABEL_IMAGE: &str = "gearnat.image";

/// How long a daemon may take to answer the first request before it counts as absent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Seconds a container gets to stop on SIGTERM before Docker kills it.
const STOP_TIMEOUT: i32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to the Docker API at {host}: {source}")]
    Connect {
        host: String,
        source: bollard::errors::Error,
    },
    #[error("the Docker API at {host} did not answer within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout { host: String },
    #[error(
        "DOCKER_HOST is unset and neither /var/run/docker.sock nor /run/podman/podman.sock \
         exists"
    )]
    NoSocket,
    #[error("starting the Docker client's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("inspecting container {id}: {source}")]
    Inspect {
        id: String,
        source: bollard::errors::Error,
    },
    #[error(
        "a container named {id} exists and is not gearnat's (no {LABEL_INSTANCE} label); remove \
         or rename it, or change the deployment's IdPrefix"
    )]
    Foreign { id: String },
    #[error("pulling image {image}: {source}")]
    Pull {
        image: String,
        source: bollard::errors::Error,
    },
    #[error("creating container {id} from {image}: {source}")]
    Create {
        id: String,
        image: String,
        source: bollard::errors::Error,
    },
    #[error("starting container {id}: {source}")]
    Start {
        id: String,
        source: bollard::errors::Error,
    },
    #[error("removing container {id}: {source}")]
    Remove {
        id: String,
        source: bollard::errors::Error,
    },
    #[error("container {id} has no image; the docker runtime needs one (`image` in the file)")]
    NoImage { id: String },
}

/// An instance's container as Docker reports it.
#[derive(Debug)]
pub struct Seen {
    pub image: Option<String>,
    pub spec_hash: Option<String>,
    pub running: bool,
    /// The container's network namespace, opened right after inspect (running only).
    pub netns: Option<Netns>,
}

/// A connection to a Docker API (Docker, or Podman's compatible socket).
pub struct Docker {
    rt: tokio::runtime::Runtime,
    client: bollard::Docker,
    host: String,
    api_version: String,
}

impl std::fmt::Debug for Docker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Docker({} API {})", self.host, self.api_version)
    }
}

/// Where the API is looked for: `DOCKER_HOST` when set, else Docker's socket, else rootful
/// Podman's Docker-compatible socket.
fn hosts() -> Vec<String> {
    if let Ok(host) = std::env::var("DOCKER_HOST") {
        if !host.is_empty() {
            return vec![host];
        }
    }
    ["/var/run/docker.sock", "/run/podman/podman.sock"]
        .iter()
        .filter(|p| std::path::Path::new(p).exists())
        .map(|p| format!("unix://{p}"))
        .collect()
}

impl Docker {
    /// Connects and asks the daemon for its version; an error when no API answers.
    pub fn connect() -> Result<Docker, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let mut last = Error::NoSocket;
        for host in hosts() {
            match Self::connect_to(&rt, &host) {
                Ok((client, api_version)) => {
                    return Ok(Docker {
                        rt,
                        client,
                        host,
                        api_version,
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn connect_to(
        rt: &tokio::runtime::Runtime,
        host: &str,
    ) -> Result<(bollard::Docker, String), Error> {
        let connect = |source| Error::Connect {
            host: host.to_string(),
            source,
        };
        let client = match host.strip_prefix("unix://") {
            Some(path) => {
                bollard::Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            }
            None => bollard::Docker::connect_with_host(host),
        }
        .map_err(connect)?;
        // bollard sends requests without a /v1.xx prefix, so the daemon answers in its own
        // default API version: ask which one that is rather than trusting a negotiation.
        let version = rt
            .block_on(async { tokio::time::timeout(CONNECT_TIMEOUT, client.version()).await })
            .map_err(|_| Error::Timeout {
                host: host.to_string(),
            })?
            .map_err(connect)?;
        let api = version.api_version.unwrap_or_else(|| "unknown".into());
        Ok((client, api))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// Instance `id`'s container, or None when there is none. A container of that name without
    /// gearnat's label is an error: gearnat never takes over what it did not make.
    pub fn inspect(&self, id: &str) -> Result<Option<Seen>, Error> {
        let inspected = self.rt.block_on(self.client.inspect_container(id, None));
        let c = match inspected {
            Ok(c) => c,
            Err(e) if not_found(&e) => return Ok(None),
            Err(source) => {
                return Err(Error::Inspect {
                    id: id.to_string(),
                    source,
                })
            }
        };
        let labels = c
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(LABEL_INSTANCE).map(String::as_str) != Some(id) {
            return Err(Error::Foreign { id: id.to_string() });
        }
        let state = c.state.unwrap_or_default();
        let running = state.running == Some(true);
        let pid = state.pid.filter(|p| *p > 0 && running);
        // Opened at once: the pid is only valid while this container lives, and a restarted
        // container has another namespace. A container that died meanwhile reads as stopped.
        let netns = pid.and_then(|p| Netns::open_pid(p as u32).ok());
        // Podman reports Config.Image qualified (`localhost/web:1` for a file's `web:1`), so
        // it would read as another image; Config.Image serves only containers made before
        // the label.
        let image = labels.get(LABEL_IMAGE).cloned();
        Ok(Some(Seen {
            image: image.or_else(|| c.config.as_ref().and_then(|c| c.image.clone())),
            spec_hash: labels.get(LABEL_SPEC).cloned(),
            running: netns.is_some(),
            netns,
        }))
    }

    /// Pulls `image` unless Docker has it, showing progress when stderr is a terminal.
    pub fn ensure_image(&self, image: &str) -> Result<(), Error> {
        match self.rt.block_on(self.client.inspect_image(image)) {
            Ok(_) => return Ok(()),
            Err(e) if not_found(&e) => {}
            Err(source) => {
                return Err(Error::Pull {
                    image: image.to_string(),
                    source,
                })
            }
        }
        warn_line!("gearnat: pulling image {image}");
        let (repo, tag) = split_image(image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let terminal = std::io::stderr().is_terminal();
        self.rt.block_on(async {
            let mut progress = self.client.create_image(Some(options), None, None);
            while let Some(item) = progress.next().await {
                let info = item.map_err(|source| Error::Pull {
                    image: image.to_string(),
                    source,
                })?;
                if terminal {
                    let bytes = info
                        .progress_detail
                        .and_then(|p| match (p.current, p.total) {
                            (Some(c), Some(t)) if t > 0 => {
                                Some(format!("{}/{} kB", c / 1024, t / 1024))
                            }
                            _ => None,
                        });
                    let line = [info.id, info.status, bytes]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    warn_part!("\r\x1b[K{line}");
                    let _ = std::io::stderr().flush();
                }
            }
            if terminal {
                warn_line!();
            }
            Ok(())
        })
    }

    /// Creates and starts instance `id`'s container of `deployment` from `spec`, without
    /// Docker's networking (gearnat wires it).
    pub fn create_and_start(
        &self,
        deployment: &str,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<(), Error> {
        self.ensure_image(&spec.image)?;
        let labels = HashMap::from([
            (LABEL_DEPLOYMENT.to_string(), deployment.to_string()),
            (LABEL_INSTANCE.to_string(), id.to_string()),
            (LABEL_SPEC.to_string(), spec.hash()),
            (LABEL_IMAGE.to_string(), spec.image.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.clone()),
            labels: Some(labels),
            hostname: Some(id.chars().take(63).collect()),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(id).build();
        self.rt
            .block_on(self.client.create_container(Some(options), body))
            .map_err(|source| Error::Create {
                id: id.to_string(),
                image: spec.image.clone(),
                source,
            })?;
        self.start(id)
    }

    pub fn start(&self, id: &str) -> Result<(), Error> {
        match self.rt.block_on(self.client.start_container(id, None)) {
            // 304: already running (started by someone else meanwhile).
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(source) => Err(Error::Start {
                id: id.to_string(),
                source,
            }),
        }
    }

    /// Stops and removes instance `id`'s container; a missing one is no error.
    pub fn remove(&self, id: &str) -> Result<bool, Error> {
        self.rt.block_on(self.remove_async(id))
    }

    /// Stops and removes several containers at once: each may take [`STOP_TIMEOUT`] to stop,
    /// and they stop side by side. Returns the ids that were there.
    pub fn remove_many(&self, ids: &[&str]) -> Result<Vec<String>, Error> {
        let all = self.rt.block_on(futures::future::join_all(
            ids.iter().map(|id| self.remove_async(id)),
        ));
        let mut removed = Vec::new();
        for (id, result) in ids.iter().zip(all) {
            if result? {
                removed.push(id.to_string());
            }
        }
        Ok(removed)
    }

    async fn remove_async(&self, id: &str) -> Result<bool, Error> {
        let err = |source| Error::Remove {
            id: id.to_string(),
            source,
        };
        let stop = StopContainerOptionsBuilder::new().t(STOP_TIMEOUT).build();
        match self.client.stop_container(id, Some(stop)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) => return Ok(false),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(err(e)),
        }
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.client.remove_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(err(e)),
        }
    }

    /// Container events, from now on; the caller keeps those of gearnat's containers (every
    /// deployment's) by their `gearnat.deployment` attribute.
    pub fn events(&self) -> impl Stream<Item = Result<EventMessage, bollard::errors::Error>> {
        // No `label` filter: Docker takes a bare key, but Podman's compatible API (4.3, as
        // Debian 12 ships it) matches only `key=value` and would send no event at all.
        let filters = HashMap::from([("type", vec!["container".to_string()])]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        self.client.events(Some(options))
    }

    /// The runtime the client runs on, for callers that drive [`Docker::events`].
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `repo[:tag]` split as Docker does: a colon after the last slash starts the tag (a colon
/// before it is a registry's port). No tag is `latest`; a digest stays in the repo part.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_into_repo_and_tag() {
        assert_eq!(split_image("busybox"), ("busybox", "latest"));
        assert_eq!(split_image("a/b:1"), ("a/b", "1"));
        assert_eq!(split_image("reg:5000/a/b"), ("reg:5000/a/b", "latest"));
        assert_eq!(split_image("reg:5000/a:2"), ("reg:5000/a", "2"));
    }

    #[test]
    fn spec_hash_follows_image_and_environment() {
        let a = ContainerSpec {
            image: "x:1".into(),
            env: vec!["A=1".into()],
        };
        let mut b = a.clone();
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 16);
        b.env.push("B=2".into());
        assert_ne!(a.hash(), b.hash());
        let c = ContainerSpec {
            image: "x:2".into(),
            ..a.clone()
        };
        assert_ne!(a.hash(), c.hash());
    }
}
