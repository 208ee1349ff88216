//! The two image builds describe the same image: `deploy/image/build.sh` (the OCI archive CI
//! builds, unpacks and runs) and the Dockerfile (for Docker users, which cannot be built here).
//! Both assemble the files with `deploy/image/rootfs.sh`; this checks what each states on its own:
//! a runtime stage `FROM scratch` (no base image to pin or scan), the user, the entrypoint, the
//! `org.opencontainers.image.*` labels, and the version, which is also the tag the DaemonSet runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;

const USER: &str = "65532:65532";
const ENTRYPOINT: &str = "/kubelet-guard";

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `org.opencontainers.image.*` label names a file sets.
fn label_names(text: &str) -> BTreeSet<String> {
    text.match_indices("org.opencontainers.image.")
        .map(|(at, prefix)| {
            text[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect::<String>()
        })
        .filter(|name| !name.is_empty() && name != "ref")
        .collect()
}

/// The Dockerfile's instructions after its last `FROM`, continuation lines joined.
fn runtime_stage(dockerfile: &str) -> Vec<String> {
    let joined = dockerfile.replace("\\\n", " ");
    let instructions: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|line| line.starts_with("FROM "))
        .expect("a FROM");
    instructions[last_from..].to_vec()
}

#[test]
fn the_dockerfile_and_build_sh_describe_the_same_image() {
    let dockerfile = read("Dockerfile");
    let build = read("deploy/image/build.sh");
    let version = env!("CARGO_PKG_VERSION");

    let stage = runtime_stage(&dockerfile);
    let has = |wanted: &str| stage.iter().any(|line| line == wanted);
    for wanted in [
        "FROM scratch",
        "COPY --from=build /rootfs/ /",
        &format!("USER {USER}"),
        &format!("ENTRYPOINT [\"{ENTRYPOINT}\"]"),
        &format!("ARG VERSION={version}"),
    ] {
        assert!(
            has(wanted),
            "Dockerfile runtime stage: no `{wanted}` in {stage:#?}"
        );
    }
    // Nothing but the root filesystem rootfs.sh assembled goes into the runtime stage.
    let copies: Vec<&String> = stage.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies.len(),
        1,
        "Dockerfile runtime stage copies: {copies:?}"
    );
    assert!(
        dockerfile.contains("deploy/image/rootfs.sh target/dist/kubelet-guard /rootfs"),
        "the Dockerfile's build stage must assemble /rootfs with deploy/image/rootfs.sh"
    );
    assert!(
        build.contains("deploy/image/rootfs.sh target/dist/kubelet-guard"),
        "build.sh must assemble its root filesystem with deploy/image/rootfs.sh"
    );

    for wanted in [
        format!("User: \"{USER}\""),
        format!("Entrypoint: [\"{ENTRYPOINT}\"]"),
    ] {
        assert!(build.contains(&wanted), "build.sh: no `{wanted}`");
    }

    let labels = label_names(&build);
    let expected: BTreeSet<String> = [
        "title",
        "description",
        "licenses",
        "version",
        "revision",
        "created",
        "source",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(labels, expected, "build.sh labels");
    let stage_text = stage.join("\n");
    assert_eq!(label_names(&stage_text), expected, "Dockerfile labels");
    assert!(
        stage_text.contains(&format!(
            "org.opencontainers.image.licenses=\"{}\"",
            env!("CARGO_PKG_LICENSE")
        )) && build.contains(&format!(
            "\"org.opencontainers.image.licenses\": \"{}\"",
            env!("CARGO_PKG_LICENSE")
        )),
        "both builds label the licence of Cargo.toml"
    );
}

/// build.sh names the imported image `kubelet-guard:<version>` (io.containerd.image.name), which
/// is what the DaemonSet runs, with IfNotPresent: an archive imported on a node is used as is.
#[test]
fn the_daemonset_runs_the_version_the_image_is_built_as() {
    let daemonset = read("deploy/base/daemonset.yaml");
    let wanted = format!("image: kubelet-guard:{}", env!("CARGO_PKG_VERSION"));
    let images: Vec<&str> = daemonset
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("image:"))
        .collect();
    assert_eq!(
        images.len(),
        2,
        "the init container and the guard: {images:?}"
    );
    assert!(
        images.iter().all(|line| *line == wanted),
        "expected `{wanted}`, found {images:?}"
    );
}
