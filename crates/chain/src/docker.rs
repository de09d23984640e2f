//! The Docker Engine as an [`ImageExport`]: `docker save` of the image by id.

use std::path::Path;

use async_trait::async_trait;
use cutover_docker::DockerProvider;
use cutover_model::{ImageInfo, ProviderError};

use crate::ImageExport;

#[async_trait]
impl ImageExport for DockerProvider {
    async fn export(&self, image: &ImageInfo, dest: &Path) -> Result<(), ProviderError> {
        self.export_image(&image.id, dest).await
    }
}
