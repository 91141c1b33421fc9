//! A [`KexecLoader`] that records calls, for tests of the code that drives kexec (never built
//! into the binary).

use super::{KexecError, KexecLoader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One call a [`RecordingKexec`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KexecCall {
    Load {
        kernel: PathBuf,
        initrds: Vec<PathBuf>,
        cmdline: String,
    },
    Unload,
}

/// A [`KexecLoader`] for tests of the code that drives kexec: records every call, tracks the
/// loaded state, and fails loads with `fail_load` when set (the error is built per call).
#[derive(Default)]
pub(crate) struct RecordingKexec {
    pub(crate) calls: Mutex<Vec<KexecCall>>,
    pub(crate) loaded: Mutex<bool>,
    pub(crate) fail_load: Option<Box<dyn Fn() -> KexecError + Send + Sync>>,
}

impl RecordingKexec {
    pub(crate) fn calls(&self) -> Vec<KexecCall> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl KexecLoader for RecordingKexec {
    fn load(&self, kernel: &Path, initrds: &[PathBuf], cmdline: &str) -> Result<(), KexecError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KexecCall::Load {
                kernel: kernel.to_path_buf(),
                initrds: initrds.to_vec(),
                cmdline: cmdline.to_string(),
            });
        if let Some(fail) = &self.fail_load {
            return Err(fail());
        }
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = true;
        Ok(())
    }

    fn unload(&self) -> Result<(), KexecError> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(KexecCall::Unload);
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = false;
        Ok(())
    }

    fn is_loaded(&self) -> Result<bool, KexecError> {
        Ok(*self.loaded.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_loader() {
        let r = RecordingKexec::default();
        assert!(!r.is_loaded().unwrap());
        r.load(Path::new("/k"), &[PathBuf::from("/i")], "ro")
            .unwrap();
        assert!(r.is_loaded().unwrap());
        r.unload().unwrap();
        assert!(!r.is_loaded().unwrap());
        assert_eq!(
            r.calls(),
            vec![
                KexecCall::Load {
                    kernel: "/k".into(),
                    initrds: vec!["/i".into()],
                    cmdline: "ro".into()
                },
                KexecCall::Unload
            ]
        );
        let failing = RecordingKexec {
            fail_load: Some(Box::new(|| KexecError::Busy)),
            ..Default::default()
        };
        assert!(matches!(
            failing.load(Path::new("/k"), &[], ""),
            Err(KexecError::Busy)
        ));
        assert!(!failing.is_loaded().unwrap());
    }
}
