// Shipped in the Android package (scripts/package-android): hands the app's Context to the
// platform certificate verifier (Android's TrustManager) that `sync` and `enrol` use when no
// fingerprint is pinned. Call once at app start, e.g. in Application.onCreate:
//     RoundsPlatform.init(applicationContext)
package org.rounds.mobile

import android.content.Context

object RoundsPlatform {
    init {
        System.loadLibrary("rounds_mobile")
    }

    /** True once the verifier is ready; throws RuntimeException when JNI fails. */
    @JvmStatic
    external fun init(context: Context): Boolean
}
