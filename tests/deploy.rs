//! The deployment files under `deploy/`: every YAML file parses; the Compose file and the
//! Kubernetes manifests have the shape README.md ("Running several instances") describes and
//! agree with `deploy/mqdb.yaml` on paths, ports, service names and the secret; the
//! ConfigMap holds that config verbatim; and the config passes `mqdb check` against the local
//! services once its host names point at them (as shipped, it must at least load: a
//! misspelt key is exit 2).

mod common;

use common::{Db, Ran, mqdb_command, temp_dir, unique};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

const PASSWORD_FILE: &str = "/run/secrets/state_password";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every document of the YAML file `deploy/REL` (Kubernetes files may hold several).
fn documents(rel: &str) -> Vec<Json> {
    let path = deploy_dir().join(rel);
    let docs = serde_saphyr::from_multiple::<Json>(&read(&path));
    let docs = docs.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Json> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(!docs.is_empty(), "{} has no document", path.display());
    docs
}

fn document(rel: &str) -> Json {
    let mut docs = documents(rel);
    assert_eq!(docs.len(), 1, "deploy/{rel}: one document");
    docs.remove(0)
}

/// The one document of `deploy/kubernetes/*.yaml` whose kind is `kind`.
fn manifest(kind: &str) -> Json {
    let dir = deploy_dir().join("kubernetes");
    let mut found = Vec::new();
    for file in yaml_files(&dir) {
        let rel = file.strip_prefix(deploy_dir()).unwrap().to_str().unwrap();
        found.extend(documents(rel).into_iter().filter(|d| d["kind"] == kind));
    }
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes/");
    found.remove(0)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn str_of<'a>(v: &'a Json, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn array_of<'a>(v: &'a Json, what: &str) -> &'a Vec<Json> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

/// A YAML integer as u64 (serde_json's arbitrary precision keeps it as text).
fn int(v: &Json) -> Option<u64> {
    v.as_u64().or_else(|| v.to_string().parse().ok())
}

/// The host of a URL such as `mqtt://host:1883` or `postgres://user@host:5432/db`.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port.split(':').next().unwrap()
}

/// `deploy/mqdb.yaml`, parsed.
fn config() -> Json {
    document("mqdb.yaml")
}

#[test]
fn every_deploy_yaml_file_parses() {
    let files = yaml_files(&deploy_dir());
    let rel: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for want in [
        "compose.yaml",
        "mqdb.yaml",
        "kubernetes/configmap.yaml",
        "kubernetes/deployment.yaml",
        "kubernetes/secret.example.yaml",
    ] {
        assert!(
            rel.iter().any(|r| r == want),
            "deploy/{want} missing: {rel:?}"
        );
    }
    for r in &rel {
        let docs = documents(r);
        for doc in &docs {
            assert!(
                doc.is_object(),
                "deploy/{r}: a document is not a mapping: {doc}"
            );
        }
        if r.starts_with("kubernetes/") {
            for doc in &docs {
                assert!(doc["apiVersion"].is_string(), "deploy/{r}: no apiVersion");
                assert!(doc["kind"].is_string(), "deploy/{r}: no kind");
            }
        }
    }
}

#[test]
fn the_compose_file_runs_three_instances_on_the_shared_store() {
    let compose = document("compose.yaml");
    let config = config();
    let services = compose["services"].as_object().expect("compose services");

    // The mqdb services are the ones built from the repository's Dockerfile.
    let mqdb: Vec<(&String, &Json)> = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .collect();
    assert!(!mqdb.is_empty(), "no service is built from the Dockerfile");
    let mut instances = 0;
    for (name, service) in &mqdb {
        let build = &service["build"];
        let context = build["context"]
            .as_str()
            .or(build.as_str())
            .expect("build context");
        let dockerfile = build["dockerfile"].as_str().unwrap_or("Dockerfile");
        let path = deploy_dir().join(context).join(dockerfile);
        assert!(path.is_file(), "{name}: {} is not a file", path.display());

        let replicas = &service["deploy"]["replicas"];
        let replicas = if replicas.is_null() {
            1
        } else {
            int(replicas).expect("replicas")
        };
        if replicas > 1 {
            // Replicas sharing a host name would share the default instance name.
            for key in ["hostname", "container_name"] {
                assert!(
                    service[key].is_null(),
                    "{name}: {key} with {replicas} replicas"
                );
            }
        }
        instances += replicas;

        let volumes = array_of(&service["volumes"], "volumes");
        let mount = volumes
            .iter()
            .filter_map(Json::as_str)
            .find(|v| v.contains(":/etc/mqdb/mqdb.yaml"))
            .unwrap_or_else(|| panic!("{name}: no volume at /etc/mqdb/mqdb.yaml: {volumes:?}"));
        let parts: Vec<&str> = mount.split(':').collect();
        assert_eq!(parts.len(), 3, "{name}: {mount}");
        assert_eq!(parts[2], "ro", "{name}: the config is mounted read-only");
        assert_eq!(
            deploy_dir().join(parts[0]).canonicalize().unwrap(),
            deploy_dir().join("mqdb.yaml").canonicalize().unwrap(),
            "{name}: mounts deploy/mqdb.yaml"
        );

        let secrets = array_of(&service["secrets"], "secrets");
        let secret_names: Vec<&str> = secrets
            .iter()
            .map(|s| s.as_str().or(s["source"].as_str()).expect("secret name"))
            .collect();
        assert!(
            secret_names.contains(&"state_password"),
            "{name}: {secret_names:?}"
        );

        let test = &service["healthcheck"]["test"];
        let words: Vec<&str> = match test {
            Json::Array(words) => words.iter().map(|w| str_of(w, "test")).collect(),
            Json::String(line) => line.split_whitespace().collect(),
            other => panic!("{name}: healthcheck test {other}"),
        };
        let runs = words
            .windows(2)
            .any(|w| w[0].ends_with("mqdb") && w[1] == "health");
        assert!(
            runs,
            "{name}: the healthcheck runs `mqdb health`: {words:?}"
        );
    }
    assert_eq!(instances, 3, "three mqdb instances");

    // The secret is a file the services mount at /run/secrets/state_password.
    let secret = &compose["secrets"]["state_password"];
    assert!(
        secret["file"].is_string(),
        "top-level secret state_password: {secret}"
    );
    assert_eq!(config["state_password_file"], PASSWORD_FILE);
    let postgres = &services["postgres"];
    assert_eq!(
        postgres["environment"]["POSTGRES_PASSWORD_FILE"],
        PASSWORD_FILE
    );

    // The hosts the config names are the services of this file.
    let state = str_of(&config["state"], "state");
    assert!(state.starts_with("postgres://"), "a shared store: {state}");
    for (what, host) in [
        ("state", url_host(state)),
        (
            "broker plant",
            url_host(str_of(&config["brokers"]["plant"]["url"], "url")),
        ),
    ] {
        assert!(
            services.contains_key(host),
            "{what}: {host} is not a service"
        );
    }
    assert_eq!(config["http"]["listen"], "0.0.0.0:9464");
    assert!(
        config["instance"].is_null(),
        "instance names come from the host names"
    );
}

#[test]
fn the_kubernetes_deployment_runs_three_probed_instances() {
    let deployment = manifest("Deployment");
    let configmap = manifest("ConfigMap");
    let secret = manifest("Secret");
    let config = config();
    assert_eq!(int(&deployment["spec"]["replicas"]), Some(3), "3 replicas");

    let pod = &deployment["spec"]["template"]["spec"];
    let containers = array_of(&pod["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container");
    let container = &containers[0];
    let listen = str_of(&config["http"]["listen"], "http.listen");
    let port: u64 = listen.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_eq!(port, 9464);
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/health", "{probe}");
        assert_eq!(int(&get["port"]), Some(port), "{probe}: {get}");
    }
    for kind in ["requests", "limits"] {
        let r = &container["resources"][kind];
        assert!(
            !r["cpu"].is_null() && !r["memory"].is_null(),
            "resources.{kind}: {r}"
        );
    }
    let non_root = pod["securityContext"]["runAsNonRoot"] == true
        || container["securityContext"]["runAsNonRoot"] == true;
    assert!(non_root, "runAsNonRoot");
    let uid = int(&pod["securityContext"]["runAsUser"]);
    assert!(uid.is_some_and(|u| u != 0), "a non-root runAsUser: {uid:?}");
    assert!(
        config["instance"].is_null(),
        "instance defaults to the pod name"
    );

    // Where each volume's files land in the container: (volume, mount path, sub path).
    let mounts: Vec<(&str, &str, Option<&str>)> = array_of(&container["volumeMounts"], "mounts")
        .iter()
        .map(|m| {
            let name = str_of(&m["name"], "mount name");
            (
                name,
                str_of(&m["mountPath"], "mountPath"),
                m["subPath"].as_str(),
            )
        })
        .collect();
    let volumes = array_of(&pod["volumes"], "volumes");
    // The path at which `key` of the volume whose `source` (configMap / secret) is named
    // `name` appears.
    let file_of = |source: &str, name_key: &str, name: &Json, key: &str| -> String {
        let volume = volumes
            .iter()
            .find(|v| v[source][name_key] == *name)
            .unwrap_or_else(|| panic!("no {source} volume named {name}: {volumes:?}"));
        let items = volume[source]["items"].as_array();
        let path = items
            .and_then(|items| items.iter().find(|i| i["key"] == key))
            .map_or(key, |i| str_of(&i["path"], "item path"));
        let vname = str_of(&volume["name"], "volume name");
        let (_, at, sub) = mounts
            .iter()
            .find(|m| m.0 == vname)
            .unwrap_or_else(|| panic!("volume {vname} is not mounted: {mounts:?}"));
        match sub {
            Some(sub) if *sub == path => at.to_string(),
            Some(sub) => panic!("volume {vname}: subPath {sub} is not {path}"),
            None => format!("{}/{path}", at.trim_end_matches('/')),
        }
    };

    let config_file = file_of(
        "configMap",
        "name",
        &configmap["metadata"]["name"],
        "mqdb.yaml",
    );
    assert_eq!(
        config_file, "/etc/mqdb/mqdb.yaml",
        "the config from the ConfigMap"
    );

    let secret_key = "state_password";
    let in_secret =
        secret["stringData"][secret_key].is_string() || secret["data"][secret_key].is_string();
    assert!(in_secret, "secret.example.yaml has {secret_key}: {secret}");
    let password_file = file_of(
        "secret",
        "secretName",
        &secret["metadata"]["name"],
        secret_key,
    );
    assert_eq!(
        Some(password_file.as_str()),
        config["state_password_file"].as_str()
    );
}

#[test]
fn the_configmap_holds_deploy_mqdb_yaml() {
    let configmap = manifest("ConfigMap");
    let embedded = str_of(&configmap["data"]["mqdb.yaml"], "data.mqdb.yaml");
    let file = read(&deploy_dir().join("mqdb.yaml"));
    assert_eq!(
        embedded, file,
        "kubernetes/configmap.yaml and deploy/mqdb.yaml differ"
    );
}

/// `text` with the secret's path pointing at a password file in `dir`, written there.
fn with_local_secret(text: &str, dir: &Path) -> PathBuf {
    let password = dir.join("state_password");
    std::fs::write(&password, "not-the-real-one\n").unwrap();
    let text = text.replace(PASSWORD_FILE, password.to_str().unwrap());
    assert!(
        !text.contains("/run/secrets/"),
        "a secret path left:\n{text}"
    );
    let path = dir.join("mqdb.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &Path, dir: &Path) -> Ran {
    let mut cmd = mqdb_command();
    Ran::of(cmd.current_dir(dir).arg("-c").arg(config).arg("check"))
}

#[test]
fn the_shipped_config_loads() {
    let dir = temp_dir("deploy");
    let path = with_local_secret(&read(&deploy_dir().join("mqdb.yaml")), dir.path());
    let out = check(&path, dir.path());
    // The hosts (postgres, mosquitto) are the Compose services, unknown here: exit 1. Exit 2
    // is an invalid configuration.
    assert_ne!(
        out.code,
        Some(2),
        "deploy/mqdb.yaml is not a valid configuration\n{out}"
    );
    assert!(matches!(out.code, Some(0 | 1)), "{out}");
    for misspelt in ["unknown key", "unknown field"] {
        assert!(!out.stderr.contains(misspelt), "{out}");
    }
    assert!(out.stdout.contains("inbound temperatures"), "{out}");
    assert!(out.stdout.contains("outbound alarms"), "{out}");
}

/// Drops the tables when the test ends, also when it panics.
struct Tables(Vec<String>);

impl Drop for Tables {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = Db::Postgres.try_exec(&format!("DROP TABLE IF EXISTS {t}"));
        }
    }
}

#[test]
fn the_shipped_config_passes_check_against_local_services() {
    let (readings, alarms) = (unique("deploy_readings"), unique("deploy_alarms"));
    // Word-wise so that `readings` does not also rename inside another name.
    let rename = |text: &str| {
        let mut out = String::new();
        let mut word = String::new();
        for c in text.chars().chain(std::iter::once('\n')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            out += &match word.as_str() {
                "readings" => readings.clone(),
                "alarms" => alarms.clone(),
                "alarms_unsent" => format!("{alarms}_unsent"),
                w => w.to_owned(),
            };
            word.clear();
            out.push(c);
        }
        out.pop();
        out
    };
    let _tables = Tables(vec![readings.clone(), alarms.clone()]);
    let sql = read(&deploy_dir().join("initdb/mqdb.sql"));
    let code: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap().to_owned() + "\n")
        .collect();
    let statements: Vec<&str> = code
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        statements.len(),
        3,
        "initdb/mqdb.sql: two tables and an index"
    );
    for s in statements {
        Db::Postgres.exec(&rename(s));
    }

    // The Compose services become the local ones, the mqdb database and user test and root.
    let text = read(&deploy_dir().join("mqdb.yaml"));
    let local = rename(&text)
        .replace("mqtt://mosquitto:1883", "mqtt://127.0.0.1:1883")
        .replace(
            "Server=postgres;Port=5432;Database=mqdb;Uid=mqdb;",
            "Server=127.0.0.1;Port=5432;Database=test;Uid=root;",
        )
        .replace(
            "postgres://mqdb@postgres:5432/mqdb",
            "postgres://root@127.0.0.1:5432/test",
        );
    for shipped in ["mosquitto:", "Server=postgres", "@postgres:"] {
        assert!(
            !local.contains(shipped),
            "{shipped} left in the local copy:\n{local}"
        );
    }
    let dir = temp_dir("deploy");
    let path = with_local_secret(&local, dir.path());
    let out = check(&path, dir.path());
    out.code(0);
    out.route_is("inbound temperatures", "ok", &[&readings]);
    out.route_is(&format!("outbound {alarms}"), "ok", &[]);
}
